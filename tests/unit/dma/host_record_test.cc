// HostRecord and RecordingBackend: what a restarted daemon finds in the record of a dead one.
#include "engine/dma/host_record.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/dma/fake_backend.h"
#include "tests/testing/expect.h"

namespace coiommu::dma {
namespace {

constexpr uint64_t kGfns = 4096;  // a 16 MiB guest
const GfnRange kRam[] = {{Gfn{0}, kGfns}};

Iova iova_of(uint64_t gfn) { return Iova{gfn << kPageShift}; }
Hva hva_of(uint64_t gfn) { return Hva{(uint64_t{1} << 40) + (gfn << kPageShift)}; }

TEST(HostRecord, EveryMapAndUnmapThroughTheRecorderIsInTheRecord) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    FakeBackend fake;
    RecordingBackend b(fake, rec);
    ASSERT_OK_AND_ASSIGN(auto o, b.map(iova_of(16), hva_of(16), 4 * kPageSize, Prot::ReadWrite));
    EXPECT_EQ(o, MapOutcome::Mapped);
    ASSERT_OK(b.map(iova_of(100), hva_of(100), kPageSize, Prot::ReadWrite));
    ASSERT_OK_AND_ASSIGN(auto all, rec.extents(kRam));
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(raw(all[0].head), 16u);
    EXPECT_EQ(all[0].pages, 4u);
    EXPECT_EQ(all[0].state, RecordState::Mapped);
    ASSERT_OK(b.unmap_exact(iova_of(16), 4 * kPageSize));
    ASSERT_OK_AND_ASSIGN(all, rec.extents(kRam));
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(raw(all[0].head), 100u);
}

TEST(HostRecord, AMapTheBackendRefusedLeavesNoEntry) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_of(8), hva_of(8), kPageSize, Prot::ReadWrite));  // someone else's mapping
    RecordingBackend b(fake, rec);
    ASSERT_OK_AND_ASSIGN(auto o, b.map(iova_of(8), hva_of(8), kPageSize, Prot::ReadWrite));
    EXPECT_EQ(o, MapOutcome::AlreadyMapped);
    ASSERT_OK_AND_ASSIGN(auto all, rec.extents(kRam));
    EXPECT_TRUE(all.empty());
}

TEST(HostRecord, ReconcileUndoesAMapThatHappenedAndForgetsOneThatDidNot) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    FakeBackend fake;
    // Killed after the map call returned but before the commit: mapped, entry says Mapping.
    rec.set(Gfn{32}, RecordState::Mapping, 2);
    ASSERT_OK(fake.map(iova_of(32), hva_of(32), 2 * kPageSize, Prot::ReadWrite));
    // Killed before the map call: entry says Mapping, nothing mapped.
    rec.set(Gfn{64}, RecordState::Mapping, 1);
    // Killed inside an unmap that had not run yet: still mapped, entry says Unmapping.
    rec.set(Gfn{200}, RecordState::Unmapping, 1);
    ASSERT_OK(fake.map(iova_of(200), hva_of(200), kPageSize, Prot::ReadWrite));
    // Committed.
    rec.set(Gfn{300}, RecordState::Mapped, 3);
    ASSERT_OK(fake.map(iova_of(300), hva_of(300), 3 * kPageSize, Prot::ReadWrite));

    ASSERT_OK_AND_ASSIGN(auto rep, reconcile(rec, fake, kRam));
    EXPECT_EQ(rep.rolled_back, 3u);
    EXPECT_EQ(rep.rolled_back_bytes, 3 * kPageSize);
    ASSERT_EQ(rep.adopted.size(), 1u);
    EXPECT_EQ(raw(rep.adopted[0].head), 300u);
    EXPECT_EQ(rep.adopted[0].pages, 3u);
    // The container holds exactly the committed extent, and the record says so.
    ASSERT_EQ(fake.mappings().size(), 1u);
    EXPECT_EQ(raw(fake.mappings()[0].iova), 300u << kPageShift);
    ASSERT_OK_AND_ASSIGN(auto all, rec.extents(kRam));
    ASSERT_EQ(all.size(), 1u);
}

TEST(HostRecord, AForgedRecordIsRefusedBeforeAnyBackendCall) {
    FakeBackend fake;
    {
        ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
        rec.set(Gfn{10}, RecordState::Mapped, 8);
        rec.set(Gfn{12}, RecordState::Mapping, 1);  // inside the extent before it
        auto r = reconcile(rec, fake, kRam);
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error().code, EINVAL);
    }
    {
        ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
        rec.set(Gfn{kGfns - 2}, RecordState::Mapped, 4);  // runs past the guest
        EXPECT_FALSE(rec.extents(kRam));
    }
    {
        // Across a hole between two RAM regions.
        ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
        const GfnRange two[] = {{Gfn{0}, 100}, {Gfn{200}, 100}};
        rec.set(Gfn{98}, RecordState::Mapped, 4);
        EXPECT_FALSE(rec.extents(two));
    }
    EXPECT_EQ(fake.counters().unmap_calls.load(), 0u);
}

TEST(HostRecord, AdoptChecksTheSealsTheSizeAndTheHeader) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    // Another guest size.
    auto wrong = HostRecord::adopt(UniqueFd(::dup(rec.fd())), kGfns * 2);
    ASSERT_FALSE(wrong);
    EXPECT_EQ(wrong.error().code, EINVAL);
    // A memfd that could shrink.
    UniqueFd plain(::memfd_create("plain", MFD_CLOEXEC));
    ASSERT_EQ(::ftruncate(plain.get(), static_cast<off_t>(record_bytes(kGfns))), 0);
    EXPECT_FALSE(HostRecord::adopt(std::move(plain), kGfns));
    // The real one, with what the dead daemon wrote.
    rec.set(Gfn{5}, RecordState::Mapped, 1);
    RecordedDevice d;
    d.dtt_root = 0x10000;
    d.dtt_level = 4;
    d.active = 1;
    d.last_mmio_seq = 9;
    rec.set_device(d);
    ASSERT_OK_AND_ASSIGN(auto again, HostRecord::adopt(UniqueFd(::dup(rec.fd())), kGfns));
    EXPECT_EQ(again.device().dtt_root, 0x10000u);
    EXPECT_EQ(again.device().last_mmio_seq, 9u);
    ASSERT_OK_AND_ASSIGN(auto all, again.extents(kRam));
    EXPECT_EQ(all.size(), 1u);
}

TEST(HostRecord, ADeviceCopyHalfWrittenLeavesThePreviousOneCurrent) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    RecordedDevice d;
    d.dtt_root = 0x1000;
    rec.set_device(d);
    // A copy written over the non-current slot without its generation store (a kill in between)
    // is invisible: simulate by writing the header's other copy directly.
    void* p = ::mmap(nullptr, kRecordHeaderBytes, PROT_READ | PROT_WRITE, MAP_SHARED, rec.fd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    auto* h = static_cast<RecordHeader*>(p);
    h->device[(h->device_gen + 1) & 1].dtt_root = 0xdead000;
    ::munmap(p, kRecordHeaderBytes);
    EXPECT_EQ(rec.device().dtt_root, 0x1000u);
}

TEST(FakeSharedState, MappingsOutliveTheBackendThatMadeThem) {
    ASSERT_OK_AND_ASSIGN(auto state, FakeBackend::create_shared_state(64));
    {
        ASSERT_OK_AND_ASSIGN(auto a, FakeBackend::attach({}, UniqueFd(::dup(state.get()))));
        ASSERT_OK(a->map(iova_of(1), hva_of(1), 2 * kPageSize, Prot::ReadWrite));
        ASSERT_OK(a->map(iova_of(9), hva_of(9), kPageSize, Prot::ReadWrite));
        ASSERT_OK(a->unmap_exact(iova_of(9), kPageSize));
    }  // the daemon is gone
    ASSERT_OK_AND_ASSIGN(auto left, FakeBackend::read_shared_state(state.get()));
    ASSERT_EQ(left.size(), 1u);
    EXPECT_EQ(raw(left[0].iova), 1u << kPageShift);
    ASSERT_OK_AND_ASSIGN(auto b, FakeBackend::attach({}, UniqueFd(::dup(state.get()))));
    EXPECT_TRUE(b->is_mapped(iova_of(1), 2 * kPageSize));
    EXPECT_EQ(b->entry_limit(), 64u);
    ASSERT_OK_AND_ASSIGN(auto o, b->map(iova_of(2), hva_of(2), kPageSize, Prot::ReadWrite));
    EXPECT_EQ(o, MapOutcome::AlreadyMapped);  // the successor sees the old mapping
    ASSERT_OK(b->unmap_exact(iova_of(1), 2 * kPageSize));
    ASSERT_OK_AND_ASSIGN(left, FakeBackend::read_shared_state(state.get()));
    EXPECT_TRUE(left.empty());
}

// Found by fuzz_resume_record: the writer stores a free entry as 0, so a word with the free state
// and a page count is a forged entry, not an extent to settle.
TEST(HostRecord, AFreeEntryWithPagesIsRefusedAsForged) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    const uint32_t forged = 4;  // state Free (0 << 30), 4 pages
    ASSERT_EQ(::pwrite(rec.fd(), &forged, sizeof forged, static_cast<off_t>(kRecordHeaderBytes + 100 * 4)), 4);
    auto all = rec.extents(kRam);
    ASSERT_FALSE(all);
    EXPECT_EQ(all.error().code, EINVAL);
    EXPECT_NE(all.error().message().find("free but has 4 pages"), std::string::npos) << all.error().message();
}

std::vector<LiveMapping> live_of(const FakeBackend& fake) {
    std::vector<LiveMapping> out;
    for (const auto& m : fake.mappings()) out.push_back({m.iova, m.size});
    return out;
}

TEST(HostRecordAudit, ARecordKeptByTheRecorderAgreesWithItsBackend) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    FakeBackend fake;
    RecordingBackend b(fake, rec);
    ASSERT_OK(b.map(iova_of(16), hva_of(16), 4 * kPageSize, Prot::ReadWrite));
    ASSERT_OK(b.map(iova_of(300), hva_of(300), kPageSize, Prot::ReadWrite));
    ASSERT_OK(b.unmap_exact(iova_of(300), kPageSize));
    rec.set(Gfn{64}, RecordState::Mapping, 2);  // killed before the call: either answer is fine
    ASSERT_OK_AND_ASSIGN(auto a, audit(rec, kRam, live_of(fake)));
    EXPECT_TRUE(a.consistent());
    EXPECT_EQ(a.mapped_extents, 1u);
    EXPECT_EQ(a.mapped_pages, 4u);
    EXPECT_EQ(a.in_progress, 1u);
}

TEST(HostRecordAudit, AMappingNoEntryDescribesIsAnOrphan) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    FakeBackend fake;
    ASSERT_OK(fake.map(iova_of(8), hva_of(8), kPageSize, Prot::ReadWrite));
    ASSERT_OK(fake.map(iova_of(40), hva_of(40), 2 * kPageSize, Prot::ReadWrite));
    rec.set(Gfn{40}, RecordState::Mapped, 1);  // recorded shorter than the mapping
    ASSERT_OK_AND_ASSIGN(auto a, audit(rec, kRam, live_of(fake)));
    EXPECT_EQ(a.orphans, 2u);
    EXPECT_EQ(a.missing, 1u);
    EXPECT_FALSE(a.consistent());
}

TEST(HostRecordAudit, AMappedEntryTheBackendLostIsMissing) {
    ASSERT_OK_AND_ASSIGN(auto rec, HostRecord::create(kGfns));
    rec.set(Gfn{100}, RecordState::Mapped, 3);
    ASSERT_OK_AND_ASSIGN(auto a, audit(rec, kRam, {}));
    EXPECT_EQ(a.missing, 1u);
    EXPECT_EQ(a.orphans, 0u);
}

}  // namespace
}  // namespace coiommu::dma
