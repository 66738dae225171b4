// The resume record validator: a host record memfd handed back by a VMM (untrusted) as a new daemon
// sees it on Resume (engine/dma/host_record.h): HostRecord::adopt (seals, size, header, device
// generation), extents() against guest RAM with holes, then reconcile() against a FakeBackend that
// holds what a container would (every Mapped extent, some in-progress ones), and audit().
//
// Input: a guest layout, how the memfd is made (by HostRecord::create, or by hand with chosen size
// and seals), header field writes, entry word writes, which in-progress entries the container
// holds. Aborts when: a validated extent lies outside guest RAM, across a hole, beyond the record,
// overlaps another or has 0 or too many pages; extents() is not ascending; reconcile() fails on a
// record it validated with a container that matches it; after reconcile an in-progress entry is
// left, the container holds anything but the adopted extents, or audit() disagrees; an input
// leaves an fd open.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/base/unique_fd.h"
#include "engine/dma/fake_backend.h"
#include "engine/dma/host_record.h"
#include "tests/fuzz/fuzz_support.h"

namespace coiommu::fuzz {
namespace {

// Guest RAM layouts (gfn ranges), with holes and a high region.
struct Layout {
    std::vector<GfnRange> ram;
    uint64_t gfn_count;  // the span: the record covers [0, span)
};

Layout layout(uint8_t which) {
    switch (which % 4) {
        case 0: return {{{Gfn{0}, 4096}}, 4096};
        case 1: return {{{Gfn{0}, 1024}, {Gfn{2048}, 1024}}, 3072};  // a hole in the middle
        case 2: return {{{Gfn{256}, 512}}, 768};                     // nothing below 256
        default: return {{{Gfn{0}, 160}, {Gfn{256}, 64}, {Gfn{1 << 16}, 2048}}, (1 << 16) + 2048};
    }
}

bool inside_ram(const Layout& l, uint64_t head, uint64_t pages) {
    for (const GfnRange& r : l.ram) {
        if (head >= raw(r.start) && head + pages <= raw(r.start) + r.count) return true;
    }
    return false;
}

// A memfd for the record: HostRecord::create's, or one made by hand (size and seals chosen).
UniqueFd make_memfd(Reader& in, const Layout& l) {
    const uint8_t mode = in.u8();
    if ((mode & 1) == 0) {
        auto rec = dma::HostRecord::create(l.gfn_count);
        FUZZ_CHECK(rec.has_value());
        UniqueFd fd(::fcntl(rec->fd(), F_DUPFD_CLOEXEC, 0));
        FUZZ_CHECK(fd.valid());
        return fd;
    }
    UniqueFd fd(::memfd_create("fuzz-record", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    FUZZ_CHECK(fd.valid());
    // Around the right size: exact, a page short or long, or tiny.
    uint64_t bytes = dma::record_bytes(l.gfn_count);
    switch ((mode >> 1) % 4) {
        case 1: bytes -= 4096; break;
        case 2: bytes += 4096; break;
        case 3: bytes = 64; break;
        default: break;
    }
    FUZZ_CHECK(::ftruncate(fd.get(), static_cast<off_t>(bytes)) == 0);
    dma::RecordHeader h;
    h.gfn_count = l.gfn_count;
    FUZZ_CHECK(::pwrite(fd.get(), &h, std::min<uint64_t>(sizeof h, bytes), 0) >= 0);
    int seals = 0;
    if ((mode & 0x10) != 0) seals |= F_SEAL_SHRINK;
    if ((mode & 0x20) != 0) seals |= F_SEAL_GROW;
    if ((mode & 0x40) != 0) seals |= F_SEAL_WRITE;
    if (seals != 0) FUZZ_CHECK(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
    return fd;
}

// Writes that a VMM (or a torn daemon) could have made: header fields, then entry words.
void scribble(Reader& in, int fd, const Layout& l) {
    const uint8_t header_writes = in.u8() % 8;
    for (uint8_t i = 0; i < header_writes; ++i) {
        const uint16_t off = in.u16() % (dma::kRecordHeaderBytes - 8);
        const uint64_t v = in.u64();
        (void)::pwrite(fd, &v, sizeof v, off);  // a sealed-write memfd refuses: fine
    }
    const uint8_t entry_writes = in.u8() % 32;
    for (uint8_t i = 0; i < entry_writes; ++i) {
        // Mostly a plausible entry at a gfn near RAM, sometimes any word anywhere.
        const uint32_t gfn = in.u32() % (l.gfn_count + 8);
        uint32_t word = in.u32();
        if ((word & 0x80000000u) == 0) word = (word & 0xC0000000u) | (word % 64);  // short extents
        (void)::pwrite(fd, &word, sizeof word, static_cast<off_t>(dma::kRecordHeaderBytes + uint64_t{gfn} * 4));
    }
}

void check_validated(const Layout& l, const std::vector<dma::RecordedExtent>& xs) {
    uint64_t end_of_previous = 0;
    for (const dma::RecordedExtent& e : xs) {
        FUZZ_CHECK(e.pages >= 1 && e.pages <= dma::kRecordMaxPages);
        FUZZ_CHECK(e.state != dma::RecordState::Free);
        FUZZ_CHECK(raw(e.head) + e.pages <= l.gfn_count);
        FUZZ_CHECK(inside_ram(l, raw(e.head), e.pages));  // never across a hole
        FUZZ_CHECK(raw(e.head) >= end_of_previous);       // ascending, no overlap
        end_of_previous = raw(e.head) + e.pages;
    }
}

int run_one(std::span<const uint8_t> data) {
    const int fds_before = open_fd_count();
    Reader in(data);
    const Layout l = layout(in.u8());
    {
        UniqueFd fd = make_memfd(in, l);
        scribble(in, fd.get(), l);
        const uint64_t held_mask = in.u64();  // which in-progress entries the container holds
        const uint64_t claimed_gfns = in.u8() % 2 == 0 ? l.gfn_count : l.gfn_count + 1 + in.u8();
        auto rec = dma::HostRecord::adopt(std::move(fd), claimed_gfns);
        if (!rec) {
            FUZZ_CHECK(rec.error().code != 0);
        } else {
            FUZZ_CHECK(claimed_gfns == l.gfn_count);  // a record of another size is refused
            (void)rec->device();                      // any generation picks a whole copy
            auto xs = rec->extents(l.ram);
            if (xs) {
                check_validated(l, *xs);
                // The container a consistent record describes: every Mapped extent, and some of
                // the in-progress ones (the call had or had not happened).
                dma::FakeBackend fake;
                uint64_t bit = 0;
                for (const dma::RecordedExtent& e : *xs) {
                    const bool held = e.state == dma::RecordState::Mapped || ((held_mask >> (bit++ % 64)) & 1) != 0;
                    if (!held) continue;
                    auto m = fake.map(Iova{raw(e.head) << kPageShift},
                                      Hva{(uint64_t{1} << 40) + (raw(e.head) << kPageShift)}, e.pages << kPageShift,
                                      dma::Prot::ReadWrite);
                    FUZZ_CHECK(m.has_value() && *m == dma::MapOutcome::Mapped);
                }
                auto rep = dma::reconcile(*rec, fake, l.ram);
                FUZZ_CHECK(rep.has_value());
                auto after = rec->extents(l.ram);
                FUZZ_CHECK(after.has_value());
                for (const dma::RecordedExtent& e : *after) FUZZ_CHECK(e.state == dma::RecordState::Mapped);
                FUZZ_CHECK(after->size() == rep->adopted.size());
                std::vector<dma::LiveMapping> live;
                for (const auto& m : fake.mappings()) live.push_back({m.iova, m.size});
                FUZZ_CHECK(live.size() == rep->adopted.size());
                auto a = dma::audit(*rec, l.ram, live);
                FUZZ_CHECK(a.has_value() && a->consistent() && a->in_progress == 0);
            } else {
                FUZZ_CHECK(xs.error().code != 0);
            }
        }
    }
    FUZZ_CHECK(open_fd_count() == fds_before);
    return 0;
}

void make_seeds(const SeedSink& sink) {
    for (uint8_t lay = 0; lay < 4; ++lay) {
        SeedWriter w;
        w.u8(lay).u8(0).u8(0);  // created record, no header writes
        const Layout l = layout(lay);
        const uint64_t first = raw(l.ram.back().start);
        w.u8(3);  // three entries: Mapped, Mapping, Unmapping
        w.u32(static_cast<uint32_t>(first)).u32((2u << 30) | 4);
        w.u32(static_cast<uint32_t>(first + 8)).u32((1u << 30) | 2);
        w.u32(static_cast<uint32_t>(first + 16)).u32((3u << 30) | 1);
        w.u64(0x5).u8(0);
        sink("layout" + std::to_string(lay) + "_three_states", w.data());
    }
    SeedWriter across;  // an extent across layout 1's hole
    across.u8(1).u8(0).u8(0).u8(1).u32(1020).u32((2u << 30) | 8).u64(0).u8(0);
    sink("across_the_hole", across.data());
    SeedWriter overlap;
    overlap.u8(0).u8(0).u8(0).u8(2).u32(10).u32((2u << 30) | 8).u32(12).u32((2u << 30) | 2).u64(0).u8(0);
    sink("overlap", overlap.data());
    SeedWriter unsealed;  // by hand, exact size, no seals
    unsealed.u8(0).u8(1).u8(0).u8(0).u64(0).u8(0);
    sink("unsealed", unsealed.data());
    SeedWriter sealed;  // by hand, exact size, shrink+grow sealed, a device copy forged
    sealed.u8(0).u8(0x31).u8(2).u16(24).u64(3).u16(32).u64(0x1000).u8(0).u64(0).u8(0);
    sink("forged_device_gen", sealed.data());
    SeedWriter other_size;
    other_size.u8(2).u8(0).u8(0).u8(0).u64(0).u8(1).u8(7);
    sink("record_of_another_guest", other_size.data());
}

}  // namespace
}  // namespace coiommu::fuzz

COIOMMU_FUZZ_ENTRY_POINTS()
