#include "engine/dma/fake_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <limits>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

namespace coiommu::dma {
namespace {

using std::chrono::nanoseconds;

// Lowest set bit of the page-size bitmap (the kernel's minimum IOMMU page size); 4 KiB when the
// bitmap is empty.
uint64_t min_page_size(uint64_t pgsizes) { return pgsizes == 0 ? kPageSize : (pgsizes & (~pgsizes + 1)); }

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Spins until `d` has passed. Deliberately not a sleep: the kernel's container mutex is held by
// a thread that is busy in the kernel, and a sleeping fake would let the CPU do other work.
void spin_for(nanoseconds d) {
    if (d <= nanoseconds::zero()) return;
    const auto deadline = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < deadline) cpu_relax();
}

// per_call + per_page * pages, saturating instead of overflowing for absurd sizes.
nanoseconds cost(nanoseconds per_call, nanoseconds per_page, uint64_t bytes) {
    const uint64_t pages = (bytes + kPageSize - 1) >> kPageShift;
    constexpr auto kMax = std::numeric_limits<nanoseconds::rep>::max();
    nanoseconds::rep total = 0;
    if (__builtin_mul_overflow(per_page.count(), pages, &total) ||
        __builtin_add_overflow(total, per_call.count(), &total)) {
        total = kMax;
    }
    return nanoseconds{total};
}

// The shared state's layout: a header page, then one slot per mapping.
constexpr uint64_t kSharedMagic = 0x454b4146'4d4f4943;  // bytes "CIOMFAKE"
constexpr uint32_t kSharedVersion = 1;
constexpr uint64_t kSharedHeaderBytes = 4096;
constexpr uint64_t kMaxSharedSlots = uint64_t{1} << 24;
constexpr int kSharedSeals = F_SEAL_SHRINK | F_SEAL_GROW;

struct SharedHeader {
    uint64_t magic = kSharedMagic;
    uint32_t version = kSharedVersion;
    uint32_t slot_bytes = 32;
    uint64_t slots = 0;
};
struct SharedSlot {
    uint64_t iova = 0;
    uint64_t size = 0;
    uint64_t hva = 0;
    uint32_t prot = 0;
    uint32_t valid = 0;  // 1: the slot is a live mapping (written last, release)
};
static_assert(sizeof(SharedSlot) == 32);

uint64_t shared_bytes(uint64_t slots) { return kSharedHeaderBytes + slots * sizeof(SharedSlot); }

// Maps and validates a shared state; fills `out` with its mappings (slot index -> mapping).
struct SharedView {
    void* base = nullptr;
    uint64_t bytes = 0;
    uint64_t slots = 0;
    SharedSlot* slot(uint64_t i) const {
        return reinterpret_cast<SharedSlot*>(static_cast<std::byte*>(base) + kSharedHeaderBytes) + i;
    }
};

Result<SharedView> map_shared_state(int fd, int prot) {
    const int seals = ::fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & kSharedSeals) != kSharedSeals) {
        return make_error(EINVAL, "fake shared state: not a memfd sealed against shrinking and growing");
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) return make_error(errno, "fstat fake shared state");
    SharedHeader h;
    if (static_cast<uint64_t>(st.st_size) < kSharedHeaderBytes ||
        ::pread(fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) {
        return make_error(EINVAL, "fake shared state: too short");
    }
    if (h.magic != kSharedMagic || h.version != kSharedVersion || h.slot_bytes != sizeof(SharedSlot) || h.slots == 0 ||
        h.slots > kMaxSharedSlots || static_cast<uint64_t>(st.st_size) != shared_bytes(h.slots)) {
        return make_error(EINVAL, "fake shared state: bad header or size");
    }
    SharedView v;
    v.bytes = shared_bytes(h.slots);
    v.slots = h.slots;
    v.base = ::mmap(nullptr, v.bytes, prot, MAP_SHARED, fd, 0);
    if (v.base == MAP_FAILED) return make_error(errno, "mmap fake shared state");
    return v;
}

// The live mappings of a mapped state, keyed by iova with their slot, validated.
Result<std::map<uint64_t, std::pair<FakeMapping, uint32_t>>> load_shared(const SharedView& v) {
    std::map<uint64_t, std::pair<FakeMapping, uint32_t>> out;
    for (uint64_t i = 0; i < v.slots; ++i) {
        SharedSlot* s = v.slot(i);
        // Acquire pairs with the release that published the slot: its fields are complete.
        if (std::atomic_ref<uint32_t>(s->valid).load(std::memory_order_acquire) != 1) continue;
        FakeMapping m{Iova{s->iova}, Hva{s->hva}, s->size, static_cast<Prot>(s->prot)};
        if (m.size == 0 || ((raw(m.iova) | m.size) & kPageMask) != 0 || raw(m.iova) + m.size - 1 < raw(m.iova)) {
            return make_error(EINVAL, fmt::format("fake shared state: slot {} is not a valid mapping", i));
        }
        out.emplace(raw(m.iova), std::pair{m, static_cast<uint32_t>(i)});
    }
    uint64_t next_free = 0;
    bool first = true;
    for (const auto& [iova, e] : out) {
        if (!first && iova < next_free) {
            return make_error(EINVAL, fmt::format("fake shared state: mapping {:#x} overlaps another", iova));
        }
        first = false;
        next_free = iova + e.first.size;
    }
    return out;
}

}  // namespace

struct FakeBackend::Shared {
    UniqueFd fd;
    SharedView view;
    std::unordered_map<uint64_t, uint32_t> slot_of;  // iova -> slot
    std::vector<uint32_t> free_slots;
    ~Shared() {
        if (view.base != nullptr) ::munmap(view.base, view.bytes);
    }
};

FakeBackend::~FakeBackend() = default;

Result<UniqueFd> FakeBackend::create_shared_state(uint64_t entry_limit) {
    if (entry_limit == 0 || entry_limit > kMaxSharedSlots) {
        return make_error(EINVAL, fmt::format("fake shared state: {} entries (1..2^24)", entry_limit));
    }
    UniqueFd fd(::memfd_create("coiommu-fake-container", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) return make_error(errno, "memfd_create fake shared state");
    if (::ftruncate(fd.get(), static_cast<off_t>(shared_bytes(entry_limit))) != 0) {
        return make_error(errno, "ftruncate fake shared state");
    }
    SharedHeader h;
    h.slots = entry_limit;
    if (::pwrite(fd.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) {
        return make_error(errno, "write fake shared state header");
    }
    if (::fcntl(fd.get(), F_ADD_SEALS, kSharedSeals) != 0) return make_error(errno, "seal fake shared state");
    return fd;
}

Result<std::unique_ptr<FakeBackend>> FakeBackend::attach(FakeConfig cfg, UniqueFd state) {
    COIOMMU_ASSIGN_OR_RETURN(SharedView view, map_shared_state(state.get(), PROT_READ | PROT_WRITE));
    auto shared = std::make_unique<Shared>();
    shared->fd = std::move(state);
    shared->view = view;
    COIOMMU_ASSIGN_OR_RETURN(auto loaded, load_shared(view));
    cfg.entry_limit = view.slots;
    auto fake = std::make_unique<FakeBackend>(std::move(cfg));
    std::vector<bool> used(view.slots, false);
    for (const auto& [iova, e] : loaded) {
        fake->maps_.emplace(iova, e.first);
        shared->slot_of.emplace(iova, e.second);
        used[e.second] = true;
    }
    for (uint64_t i = view.slots; i-- > 0;) {
        if (!used[i]) shared->free_slots.push_back(static_cast<uint32_t>(i));
    }
    fake->live_.store(fake->maps_.size(), std::memory_order_relaxed);
    fake->shared_ = std::move(shared);
    return fake;
}

Result<std::vector<FakeMapping>> FakeBackend::read_shared_state(int state_fd) {
    COIOMMU_ASSIGN_OR_RETURN(SharedView view, map_shared_state(state_fd, PROT_READ));
    auto loaded = load_shared(view);
    ::munmap(view.base, view.bytes);
    if (!loaded) return coiommu::unexpected(loaded.error());
    std::vector<FakeMapping> out;
    out.reserve(loaded->size());
    for (const auto& [iova, e] : *loaded) out.push_back(e.first);
    return out;
}

void FakeBackend::share_added_locked(const FakeMapping& m) {
    if (!shared_) return;
    // maps_.size() <= entry_limit == slots, so a slot is always free here.
    const uint32_t i = shared_->free_slots.back();
    shared_->free_slots.pop_back();
    SharedSlot* s = shared_->view.slot(i);
    s->iova = raw(m.iova);
    s->size = m.size;
    s->hva = raw(m.hva);
    s->prot = static_cast<uint32_t>(m.prot);
    // Release: the fields above are in the page cache before the slot counts as live.
    std::atomic_ref<uint32_t>(s->valid).store(1, std::memory_order_release);
    shared_->slot_of[raw(m.iova)] = i;
}

void FakeBackend::share_removed_locked(uint64_t iova) {
    if (!shared_) return;
    auto it = shared_->slot_of.find(iova);
    if (it == shared_->slot_of.end()) return;
    std::atomic_ref<uint32_t>(shared_->view.slot(it->second)->valid).store(0, std::memory_order_release);
    shared_->free_slots.push_back(it->second);
    shared_->slot_of.erase(it);
}

LatencyModel LatencyModel::typical() {
    using std::chrono::nanoseconds;
    LatencyModel m;
    // One 4 KiB map ≈ 2 µs and one 4 KiB unmap ≈ 3 µs (engine/README.md, "VFIO cost model"). How
    // that splits between the call and its pages decides what coalescing can win, so it follows the
    // evidence:
    //  - map: syscall + container mutex + vfio_dma kzalloc + rb-tree insert + batch setup is per
    //    call; inside one MAP_DMA the kernel pins 512 pages per batch, ≈0.2 µs/page amortised
    //    (the bulk-pin measurement). The real-VFIO QEMU guest agrees on the shape: a warm
    //    4 KiB map costs 14-21 µs there, a warm 64 MiB map 0.5-0.9 µs per page (TCG inflates both).
    m.map_per_call = nanoseconds{1800};
    m.map_per_page = nanoseconds{200};
    //  - unmap: syscall + mutex + one IOTLB sync per vfio_dma entry (a coalesced extent is one
    //    entry) per call; unpin and accounting ≈0.15 µs per page when batched (the kernel's
    //    long-term-pin stand-ins).
    m.unmap_per_call = nanoseconds{2850};
    m.unmap_per_page = nanoseconds{150};
    return m;
}

FakeBackend::FakeBackend(FakeConfig cfg) : cfg_(std::move(cfg)), align_mask_(min_page_size(cfg_.iova_pgsizes) - 1) {}

void FakeBackend::fail_nth(Op op, uint64_t n, int err) {
    if (n == 0 || err == 0) return;
    std::lock_guard lock(mu_);
    nth_faults_.push_back(NthFault{op, n, err});
}

void FakeBackend::fail_if(std::function<int(Op, Iova, uint64_t)> pred) {
    std::lock_guard lock(mu_);
    fault_pred_ = std::move(pred);
}

void FakeBackend::clear_faults() {
    std::lock_guard lock(mu_);
    nth_faults_.clear();
    fault_pred_ = nullptr;
}

int FakeBackend::take_fault_locked(Op op, Iova iova, uint64_t size) {
    int err = 0;
    // Every armed fault for this op counts the call, so two armed faults keep their own
    // positions; the first one to reach zero wins this call, a second one reaching zero on the
    // same call is consumed too (both named this call).
    for (auto it = nth_faults_.begin(); it != nth_faults_.end();) {
        if (it->op == op && --it->remaining == 0) {
            if (err == 0) err = it->err;
            it = nth_faults_.erase(it);
        } else {
            ++it;
        }
    }
    if (err == 0 && fault_pred_) err = fault_pred_(op, iova, size);
    return err;
}

FakeBackend::MapSet::const_iterator FakeBackend::containing_locked(uint64_t addr) const {
    auto it = maps_.upper_bound(addr);  // first mapping starting after addr
    if (it == maps_.begin()) return maps_.end();
    --it;
    const FakeMapping& m = it->second;
    return addr - raw(m.iova) < m.size ? it : maps_.end();
}

bool FakeBackend::in_iova_ranges(uint64_t first, uint64_t last) const {
    if (cfg_.iova_ranges.empty()) return true;
    for (const IovaRange& r : cfg_.iova_ranges) {
        if (first >= r.start && last <= r.end) return true;
    }
    return false;
}

void FakeBackend::charge(nanoseconds per_call, nanoseconds per_page, uint64_t bytes) const {
    if (!cfg_.latency) return;
    spin_for(cost(per_call, per_page, bytes));
}

Result<MapOutcome> FakeBackend::map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    const Verdict v = do_map(iova, hva, size, prot);
    return finish_map(v.err, iova, size, v.why);
}

FakeBackend::Verdict FakeBackend::do_map(Iova iova, Hva hva, uint64_t size, Prot prot) {
    const auto prot_bits = static_cast<uint32_t>(prot);
    const nanoseconds per_call = cfg_.latency ? cfg_.latency->map_per_call : nanoseconds{};
    const nanoseconds per_page = cfg_.latency ? cfg_.latency->map_per_page : nanoseconds{};

    std::lock_guard lock(mu_);
    if (const int injected = take_fault_locked(Op::Map, iova, size); injected != 0) {
        charge(per_call, {}, 0);
        return {injected, "injected fault"};
    }
    // Argument checks: the kernel makes them before taking the container lock, so they cost no
    // latency here.
    if (size == 0 || ((raw(iova) | raw(hva) | size) & align_mask_) != 0) {
        return {EINVAL, "size zero or not page aligned"};
    }
    if (prot_bits == 0 || (prot_bits & ~static_cast<uint32_t>(Prot::ReadWrite)) != 0) {
        return {EINVAL, "bad prot"};
    }
    const uint64_t last = raw(iova) + size - 1;
    if (last < raw(iova) || raw(hva) + size - 1 < raw(hva)) return {EINVAL, "range wraps"};

    // The mapping with the greatest start <= last is the only one that can overlap.
    if (auto it = maps_.upper_bound(last); it != maps_.begin()) {
        const FakeMapping& prev = std::prev(it)->second;
        if (raw(prev.iova) + prev.size - 1 >= raw(iova)) {
            charge(per_call, {}, 0);
            return {EEXIST, {}};
        }
    }
    if (maps_.size() >= cfg_.entry_limit) {
        charge(per_call, {}, 0);
        return {ENOSPC, {}};
    }
    if (!in_iova_ranges(raw(iova), last)) {
        charge(per_call, {}, 0);
        return {EINVAL, "outside the container's iova ranges"};
    }
    const FakeMapping added{iova, hva, size, prot};
    maps_.emplace(raw(iova), added);
    share_added_locked(added);
    live_.store(maps_.size(), std::memory_order_relaxed);
    charge(per_call, per_page, size);
    return {};
}

Result<uint64_t> FakeBackend::unmap(Iova iova, uint64_t size) {
    const Verdict v = do_unmap(iova, size);
    return finish_unmap(v.err, iova, size, v.bytes, v.why);
}

FakeBackend::Verdict FakeBackend::do_unmap(Iova iova, uint64_t size) {
    const nanoseconds per_call = cfg_.latency ? cfg_.latency->unmap_per_call : nanoseconds{};
    const nanoseconds per_page = cfg_.latency ? cfg_.latency->unmap_per_page : nanoseconds{};

    std::lock_guard lock(mu_);
    if (const int injected = take_fault_locked(Op::Unmap, iova, size); injected != 0) {
        charge(per_call, {}, 0);
        return {injected, "injected fault"};
    }
    if (size == 0 || ((raw(iova) | size) & align_mask_) != 0) {
        return {EINVAL, "size zero or not page aligned"};
    }
    const uint64_t last = raw(iova) + size - 1;
    if (last < raw(iova)) return {EINVAL, "range wraps"};

    // v2 semantics: neither end may fall inside a mapping that extends beyond the range.
    const auto first_hit = containing_locked(raw(iova));
    const bool bisects_start = first_hit != maps_.end() && raw(first_hit->second.iova) != raw(iova);
    const auto last_hit = containing_locked(last);
    const bool bisects_end = last_hit != maps_.end() && raw(last_hit->second.iova) + last_hit->second.size - 1 != last;
    if (bisects_start || bisects_end) {
        charge(per_call, {}, 0);
        return {EINVAL, "range bisects a mapping"};
    }
    uint64_t bytes = 0;
    auto it = maps_.lower_bound(raw(iova));
    while (it != maps_.end() && raw(it->second.iova) <= last) {
        bytes += it->second.size;
        share_removed_locked(it->first);
        it = maps_.erase(it);
    }
    live_.store(maps_.size(), std::memory_order_relaxed);
    charge(per_call, per_page, bytes);
    return {0, {}, bytes};
}

Result<ContainerInfo> FakeBackend::info() const {
    ContainerInfo out;
    out.iova_pgsizes = cfg_.iova_pgsizes;
    out.iova_ranges = cfg_.iova_ranges;
    out.entry_limit = cfg_.entry_limit;
    const uint64_t live = live_entries();
    out.entries_available = live >= cfg_.entry_limit ? 0 : cfg_.entry_limit - live;
    return out;
}

bool FakeBackend::is_mapped(Iova iova, uint64_t size) const {
    if (size == 0) return true;
    const uint64_t last = raw(iova) + size - 1;
    if (last < raw(iova)) return false;
    std::lock_guard lock(mu_);
    uint64_t next = raw(iova);  // first byte not yet known to be covered
    auto it = containing_locked(next);
    while (it != maps_.end()) {
        const FakeMapping& m = it->second;
        const uint64_t m_last = raw(m.iova) + m.size - 1;
        if (m_last >= last) return true;
        next = m_last + 1;
        ++it;
        if (it == maps_.end() || raw(it->second.iova) != next) return false;
    }
    return false;
}

std::optional<FakeMapping> FakeBackend::find(Iova iova) const {
    std::lock_guard lock(mu_);
    const auto it = containing_locked(raw(iova));
    if (it == maps_.end()) return std::nullopt;
    return it->second;
}

std::vector<FakeMapping> FakeBackend::mappings() const {
    std::lock_guard lock(mu_);
    std::vector<FakeMapping> out;
    out.reserve(maps_.size());
    for (const auto& [key, m] : maps_) out.push_back(m);
    return out;
}

}  // namespace coiommu::dma
