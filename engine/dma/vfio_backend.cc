#include "engine/dma/vfio_backend.h"

#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <utility>

namespace coiommu::dma {

// The header describes the reply layout without <linux/vfio.h>; hold it to the uapi here.
static_assert(kIommuInfoSize == sizeof(vfio_iommu_type1_info));
static_assert(offsetof(vfio_iommu_type1_info, argsz) == 0);
static_assert(offsetof(vfio_iommu_type1_info, flags) == 4);
static_assert(offsetof(vfio_iommu_type1_info, iova_pgsizes) == 8);
static_assert(offsetof(vfio_iommu_type1_info, cap_offset) == 16);
static_assert(kInfoCapHeaderSize == sizeof(vfio_info_cap_header));
static_assert(offsetof(vfio_info_cap_header, id) == 0);
static_assert(offsetof(vfio_info_cap_header, version) == 2);
static_assert(offsetof(vfio_info_cap_header, next) == 4);
static_assert(kIommuInfoFlagPgsizes == VFIO_IOMMU_INFO_PGSIZES);
static_assert(kIommuInfoFlagCaps == VFIO_IOMMU_INFO_CAPS);
static_assert(kInfoCapIovaRange == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
static_assert(kInfoCapDmaAvail == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL);
static_assert(offsetof(vfio_iommu_type1_info_cap_iova_range, nr_iovas) == 8);
static_assert(offsetof(vfio_iommu_type1_info_cap_iova_range, iova_ranges) == 16);
static_assert(sizeof(vfio_iova_range) == 16);
static_assert(offsetof(vfio_iommu_type1_info_dma_avail, avail) == 8);

namespace {

constexpr size_t kIovaRangeHeaderSize = 16;  // cap header + nr_iovas + reserved
constexpr size_t kIovaRangeEntrySize = 16;
constexpr size_t kDmaAvailSize = 12;  // cap header + avail
// First GET_INFO buffer: the header plus room for a few ranges and DMA_AVAIL, so one ioctl
// usually suffices. The retry takes the kernel's argsz, capped at kMaxInfoBytes.
constexpr size_t kInitialInfoBytes = 512;
constexpr size_t kMaxInfoBytes = size_t{1} << 20;
constexpr uint64_t kDefaultEntryLimit = 65535;  // the kernel's default (U16_MAX)

// Unaligned little reads from the reply: the buffer is bytes, its fields are not aligned in
// general (a crafted or truncated reply), so copy.
template <class T>
T load(std::span<const std::byte> buf, size_t off) {
    T v;
    std::memcpy(&v, buf.data() + off, sizeof(T));
    return v;
}

coiommu::unexpected<Error> malformed(std::string_view what) {
    return make_error(EPROTO, fmt::format("vfio GET_INFO reply: {}", what));
}

}  // namespace

Result<InfoCaps> parse_info_caps(std::span<const std::byte> reply, uint32_t first_offset) {
    InfoCaps out;
    uint64_t off = first_offset;
    for (uint32_t n = 0; off != 0; ++n) {
        if (n == kMaxInfoCaps) return malformed(fmt::format("more than {} capabilities", kMaxInfoCaps));
        if (off < kIommuInfoSize || off > reply.size() || reply.size() - off < kInfoCapHeaderSize) {
            return malformed(fmt::format("capability at {:#x} outside the reply ({:#x} bytes)", off, reply.size()));
        }
        const auto id = load<uint16_t>(reply, off);
        const auto next = load<uint32_t>(reply, off + 4);
        if (next != 0 && next <= off) {
            return malformed(fmt::format("capability at {:#x} links back to {:#x}", off, next));
        }
        const size_t room = reply.size() - off;
        if (id == kInfoCapIovaRange) {
            if (room < kIovaRangeHeaderSize) return malformed("IOVA_RANGE capability truncated");
            const uint32_t nr = load<uint32_t>(reply, off + 8);
            if (nr > (room - kIovaRangeHeaderSize) / kIovaRangeEntrySize) {
                return malformed(fmt::format("IOVA_RANGE claims {} ranges, the reply holds fewer", nr));
            }
            out.iova_ranges.clear();
            out.iova_ranges.reserve(nr);
            for (uint32_t i = 0; i < nr; ++i) {
                const size_t at = off + kIovaRangeHeaderSize + size_t{i} * kIovaRangeEntrySize;
                const IovaRange r{load<uint64_t>(reply, at), load<uint64_t>(reply, at + 8)};
                if (r.start > r.end) return malformed(fmt::format("IOVA range {} has start > end", i));
                out.iova_ranges.push_back(r);
            }
        } else if (id == kInfoCapDmaAvail) {
            if (room < kDmaAvailSize) return malformed("DMA_AVAIL capability truncated");
            out.dma_avail = load<uint32_t>(reply, off + 8);
        }
        off = next;
    }
    return out;
}

Result<IommuInfo> parse_iommu_info(std::span<const std::byte> reply) {
    if (reply.size() < kIommuInfoSize) return malformed(fmt::format("{} bytes, shorter than the header", reply.size()));
    IommuInfo info;
    info.argsz = load<uint32_t>(reply, 0);
    info.flags = load<uint32_t>(reply, 4);
    info.iova_pgsizes = load<uint64_t>(reply, 8);
    const uint32_t cap_offset = load<uint32_t>(reply, 16);
    if ((info.flags & kIommuInfoFlagCaps) == 0 || cap_offset == 0 || info.argsz > reply.size()) return info;
    auto caps = parse_info_caps(reply.first(info.argsz), cap_offset);
    if (!caps) return coiommu::unexpected(caps.error());
    info.caps = std::move(*caps);
    return info;
}

std::optional<uint64_t> parse_entry_limit(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
    if (text.empty()) return std::nullopt;
    uint64_t v = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc{} || ptr != text.data() + text.size()) return std::nullopt;
    return v;
}

VfioBackend::VfioBackend(UniqueFd container, UniqueFd group)
    : container_(std::move(container)), group_(std::move(group)) {}

VfioBackend::~VfioBackend() = default;

Result<std::unique_ptr<VfioBackend>> VfioBackend::open_group(const std::string& group_path,
                                                             const std::string& container_path) {
    const std::string ctx = "vfio open_group " + group_path;
    UniqueFd container(::open(container_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!container) return make_error(errno, fmt::format("{}: open {}", ctx, container_path));

    const int api = ::ioctl(container.get(), VFIO_GET_API_VERSION);
    if (api < 0) return make_error(errno, ctx + ": VFIO_GET_API_VERSION");
    if (api != VFIO_API_VERSION) {
        return make_error(EPROTONOSUPPORT,
                          fmt::format("{}: VFIO API version {}, expected {}", ctx, api, VFIO_API_VERSION));
    }
    const int ext = ::ioctl(container.get(), VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU);
    if (ext < 0) return make_error(errno, ctx + ": VFIO_CHECK_EXTENSION(TYPE1v2)");
    if (ext != 1) return make_error(ENOTSUP, ctx + ": the kernel has no VFIO TYPE1v2 IOMMU");

    UniqueFd group(::open(group_path.c_str(), O_RDWR | O_CLOEXEC));
    if (!group) return make_error(errno, ctx + ": open");
    vfio_group_status status{};
    status.argsz = sizeof(status);
    if (::ioctl(group.get(), VFIO_GROUP_GET_STATUS, &status) < 0) {
        return make_error(errno, ctx + ": VFIO_GROUP_GET_STATUS");
    }
    if ((status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET) != 0) {
        return make_error(EBUSY, ctx + ": group is already in a container");
    }
    if ((status.flags & VFIO_GROUP_FLAGS_VIABLE) == 0) {
        return make_error(EPERM, ctx + ": group not viable (bind every device in it to vfio-pci)");
    }
    int cfd = container.get();
    if (::ioctl(group.get(), VFIO_GROUP_SET_CONTAINER, &cfd) < 0) {
        return make_error(errno, ctx + ": VFIO_GROUP_SET_CONTAINER");
    }
    if (::ioctl(container.get(), VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
        return make_error(errno, ctx + ": VFIO_SET_IOMMU(TYPE1v2)");
    }

    std::unique_ptr<VfioBackend> backend(new VfioBackend(std::move(container), std::move(group)));
    auto info = backend->query_info();
    if (!info) return coiommu::unexpected(with_context(info.error(), ctx));
    // A fresh container has every entry available: DMA_AVAIL is the limit it was given.
    backend->entry_limit_ = info->caps.dma_avail.value_or(module_entry_limit().value_or(kDefaultEntryLimit));
    return backend;
}

Result<std::unique_ptr<VfioBackend>> VfioBackend::adopt(UniqueFd container, std::optional<uint64_t> entry_limit) {
    if (!container) return make_error(EBADF, "vfio adopt: invalid container fd");
    std::unique_ptr<VfioBackend> backend(new VfioBackend(std::move(container), UniqueFd{}));
    auto info = backend->query_info();
    if (!info) return coiommu::unexpected(with_context(info.error(), "vfio adopt (is the IOMMU type set?)"));
    // The VMM may have mapped already, so DMA_AVAIL is only a lower bound of the limit.
    const uint64_t avail = info->caps.dma_avail.value_or(0);
    const uint64_t fallback = info->caps.dma_avail ? avail : kDefaultEntryLimit;
    // The module parameter may have been lowered after this container was set up: never below avail.
    backend->entry_limit_ = std::max(avail, entry_limit.value_or(module_entry_limit().value_or(fallback)));
    return backend;
}

std::optional<uint64_t> VfioBackend::module_entry_limit(const std::string& param_path) {
    UniqueFd fd(::open(param_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) return std::nullopt;
    char buf[32];
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n <= 0) return std::nullopt;
    return parse_entry_limit(std::string_view(buf, static_cast<size_t>(n)));
}

Status VfioBackend::set_module_entry_limit(uint64_t limit, const std::string& param_path) {
    const std::string ctx = fmt::format("write {} to {}", limit, param_path);
    UniqueFd fd(::open(param_path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) return make_error(errno, ctx);
    const std::string text = fmt::format("{}\n", limit);
    const ssize_t n = ::write(fd.get(), text.data(), text.size());
    if (n < 0) return make_error(errno, ctx);
    if (static_cast<size_t>(n) != text.size()) return make_error(EIO, ctx + ": short write");
    return ok();
}

Result<IommuInfo> VfioBackend::query_info() const {
    std::vector<std::byte> buf(kInitialInfoBytes);
    for (int attempt = 0; attempt < 3; ++attempt) {
        const auto argsz = static_cast<uint32_t>(buf.size());
        std::memset(buf.data(), 0, buf.size());
        std::memcpy(buf.data(), &argsz, sizeof(argsz));
        if (::ioctl(container_.get(), VFIO_IOMMU_GET_INFO, buf.data()) < 0) {
            return make_error(errno, "vfio VFIO_IOMMU_GET_INFO");
        }
        uint32_t needed = 0;
        std::memcpy(&needed, buf.data(), sizeof(needed));
        if (needed <= buf.size()) return parse_iommu_info(buf);
        if (needed > kMaxInfoBytes) {
            return make_error(EPROTO, fmt::format("vfio VFIO_IOMMU_GET_INFO wants {} bytes", needed));
        }
        buf.resize(needed);  // the caps did not fit: the kernel said how much they need
    }
    return make_error(EPROTO, "vfio VFIO_IOMMU_GET_INFO: reply size keeps growing");
}

Result<MapOutcome> VfioBackend::map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    const auto prot_bits = static_cast<uint32_t>(prot);
    if ((prot_bits & ~static_cast<uint32_t>(Prot::ReadWrite)) != 0) return finish_map(EINVAL, iova, size, "bad prot");
    vfio_iommu_type1_dma_map m{};
    m.argsz = sizeof(m);
    m.flags = (has_read(prot) ? VFIO_DMA_MAP_FLAG_READ : 0u) | (has_write(prot) ? VFIO_DMA_MAP_FLAG_WRITE : 0u);
    m.vaddr = raw(hva);
    m.iova = raw(iova);
    m.size = size;
    const int err = ::ioctl(container_.get(), VFIO_IOMMU_MAP_DMA, &m) < 0 ? errno : 0;
    return finish_map(err, iova, size);
}

Result<uint64_t> VfioBackend::unmap(Iova iova, uint64_t size) {
    vfio_iommu_type1_dma_unmap u{};
    u.argsz = sizeof(u);
    u.flags = 0;
    u.iova = raw(iova);
    u.size = size;
    const int err = ::ioctl(container_.get(), VFIO_IOMMU_UNMAP_DMA, &u) < 0 ? errno : 0;
    return finish_unmap(err, iova, size, err == 0 ? static_cast<uint64_t>(u.size) : 0);
}

Result<ContainerInfo> VfioBackend::info() const {
    auto raw_info = query_info();
    if (!raw_info) return coiommu::unexpected(raw_info.error());
    ContainerInfo out;
    out.iova_pgsizes = raw_info->iova_pgsizes;
    out.iova_ranges = std::move(raw_info->caps.iova_ranges);
    out.entry_limit = entry_limit_;
    if (raw_info->caps.dma_avail) {
        out.entries_available = *raw_info->caps.dma_avail;
        last_live_.store(entry_limit_ - std::min(entry_limit_, *raw_info->caps.dma_avail), std::memory_order_relaxed);
    } else {
        out.entries_available = entry_limit_;
    }
    return out;
}

uint64_t VfioBackend::live_entries() const {
    auto raw_info = query_info();
    if (!raw_info) return last_live_.load(std::memory_order_relaxed);
    if (!raw_info->caps.dma_avail) return 0;
    const uint64_t live = entry_limit_ - std::min(entry_limit_, *raw_info->caps.dma_avail);
    last_live_.store(live, std::memory_order_relaxed);
    return live;
}

}  // namespace coiommu::dma
