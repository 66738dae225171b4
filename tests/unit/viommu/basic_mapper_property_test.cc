// Property test: random add/remove/export/release/session/reset sequences on a
// BasicMemoryMapper agree, result for result, with a byte-per-unit reference model over a
// small IOVA space. Fixed seeds, so a failure replays.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "engine/viommu/basic_mapper.h"
#include "tests/testing/expect.h"
#include "tests/testing/log_capture.h"

namespace coiommu::viommu {
namespace {

constexpr uint64_t kUnits = 96;     // model address space: [0, 96)
constexpr uint64_t kMaxStart = 80;  // ops start below this...
constexpr uint64_t kMaxSize = 16;   // ...and span at most this, so they stay inside
constexpr int kSteps = 6000;

// The reference model: who owns each IOVA unit, plus the export session.
struct Model {
    struct Mapping {
        uint64_t iova, gpa, size;
        Prot prot;
    };
    std::vector<int> owner = std::vector<int>(kUnits, -1);  // index into maps, or -1
    std::vector<std::optional<Mapping>> maps;
    bool session = false;
    bool faulted = false;
    bool fault_signaled = false;
    bool resolved_signaled = false;
    std::vector<std::pair<uint64_t, uint64_t>> exported;  // inclusive

    size_t live() const {
        return static_cast<size_t>(
            std::count_if(maps.begin(), maps.end(), [](const auto& m) { return m.has_value(); }));
    }

    // add_map: Ok / OverlapFailure.
    AddMapResult add(uint64_t iova, uint64_t gpa, uint64_t size, Prot prot) {
        for (uint64_t u = iova; u < iova + size; ++u) {
            if (owner[u] >= 0) return AddMapResult::OverlapFailure;
        }
        const int id = static_cast<int>(maps.size());
        maps.push_back(Mapping{iova, gpa, size, prot});
        for (uint64_t u = iova; u < iova + size; ++u) owner[u] = id;
        return AddMapResult::Ok;
    }

    bool overlaps_export(uint64_t first, uint64_t last) const {
        return std::any_of(exported.begin(), exported.end(),
                           [&](const auto& r) { return std::max(r.first, first) <= std::min(r.second, last); });
    }

    // Returns whether a fault event is handed out.
    bool fault() {
        if (faulted) return false;
        faulted = true;
        fault_signaled = true;
        return true;
    }

    // remove_map: nullopt = OverlapFailure, else whether an event is returned.
    std::optional<bool> remove(uint64_t iova, uint64_t size) {
        std::vector<int> hit;
        for (uint64_t u = iova; u < iova + size; ++u) {
            if (owner[u] >= 0 && std::find(hit.begin(), hit.end(), owner[u]) == hit.end()) hit.push_back(owner[u]);
        }
        for (int id : hit) {
            const Mapping& m = *maps[id];
            if (m.iova < iova || m.iova + m.size > iova + size) return std::nullopt;
        }
        for (int id : hit) {
            const Mapping& m = *maps[id];
            for (uint64_t u = m.iova; u < m.iova + m.size; ++u) owner[u] = -1;
            maps[id].reset();
        }
        if (session && overlaps_export(iova, iova + size - 1)) return fault();
        return false;
    }

    // export: an errno, or the regions.
    int export_errno(uint64_t iova, uint64_t size) const {
        if (!session) return ENOENT;
        if (faulted) return EPIPE;
        if (size == 0) return EINVAL;
        for (uint64_t u = iova; u < iova + size; ++u) {
            if (owner[u] < 0) return EFAULT;
        }
        return 0;
    }
    std::vector<MemRegion> export_regions(uint64_t iova, uint64_t size) {
        std::vector<MemRegion> out;
        uint64_t prev_gpa = 0;
        for (uint64_t u = iova; u < iova + size; ++u) {
            const Mapping& m = *maps[owner[u]];
            const uint64_t gpa = m.gpa + (u - m.iova);
            if (!out.empty() && prev_gpa + 1 == gpa && out.back().prot == m.prot) {
                ++out.back().len;
            } else {
                out.push_back(MemRegion{Gpa{gpa}, 1, m.prot});
            }
            prev_gpa = gpa;
        }
        exported.emplace_back(iova, iova + size - 1);
        return out;
    }

    // release: an errno (0 = ok).
    int release(uint64_t iova, uint64_t size) {
        if (!session) return ENOENT;
        if (size == 0) return 0;  // the empty range: unknown, warning, ok
        auto it = std::find(exported.begin(), exported.end(), std::make_pair(iova, iova + size - 1));
        if (it == exported.end()) return 0;
        exported.erase(it);
        if (exported.empty() && faulted) resolved_signaled = true;
        return 0;
    }

    // start_export_session: an errno (0 = ok).
    int start_session() {
        if (session && !exported.empty()) return EBUSY;
        session = true;
        faulted = false;
        fault_signaled = false;
        resolved_signaled = false;
        exported.clear();
        return 0;
    }

    bool reset() {
        for (auto& o : owner) o = -1;
        maps.clear();
        if (session && !exported.empty()) return fault();
        return false;
    }
};

void run(uint64_t seed) {
    testing::LogCapture quiet;  // unknown releases warn; keep the output readable
    std::mt19937_64 rng(seed);
    auto pick = [&](uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(rng); };

    BasicMemoryMapper mapper(~uint64_t{0});
    Model model;
    EventFd fault_event;                                // the current session's client event (invalid before one)
    EventFd resolved_event;                             // from the session's first fault (invalid before one)
    std::vector<std::pair<uint64_t, uint64_t>> recent;  // (iova, size) of recent exports, to release
    // Coverage of the interesting paths, so the run cannot pass vacuously.
    int adds_ok = 0, overlaps = 0, exports_ok = 0, merged_exports = 0, faults = 0, resolutions = 0;

    for (int step = 0; step < kSteps; ++step) {
        SCOPED_TRACE(::testing::Message() << "seed " << seed << " step " << step);
        const uint64_t op = pick(0, 99);
        const uint64_t iova = pick(0, kMaxStart - 1);
        const uint64_t size = pick(0, 40) == 0 ? 0 : pick(1, kMaxSize);
        if (op < 35) {
            // Often start right where a live mapping ends (touching ranges) and continue its
            // GPA, so exports span several mappings and merge.
            uint64_t a_iova = iova;
            uint64_t gpa = pick(0, 1000);
            if (pick(0, 1) == 0) {
                const uint64_t u = pick(0, kMaxStart - 1);
                if (model.owner[u] >= 0) {
                    const auto& below = *model.maps[model.owner[u]];
                    if (below.iova + below.size < kMaxStart) {
                        a_iova = below.iova + below.size;
                        if (pick(0, 2) != 0) gpa = below.gpa + below.size;
                    }
                }
            }
            const Prot prot = pick(0, 3) == 0 ? Prot::Read : Prot::ReadWrite;
            auto got = mapper.add_map(MappingInfo{Iova{a_iova}, Gpa{gpa}, size, prot});
            if (size == 0) {
                EXPECT_ERR(got, EINVAL);
            } else {
                ASSERT_OK(got);
                const AddMapResult want = model.add(a_iova, gpa, size, prot);
                ASSERT_EQ(*got, want);
                (want == AddMapResult::Ok ? adds_ok : overlaps)++;
            }
        } else if (op < 55) {
            auto got = mapper.remove_map(Iova{iova}, size);
            if (size == 0) {
                EXPECT_ERR(got, EINVAL);
            } else {
                ASSERT_OK(got);
                const std::optional<bool> want = model.remove(iova, size);
                ASSERT_EQ(got->is_overlap_failure(), !want.has_value());
                if (want) {
                    ASSERT_EQ(got->has_fault_resolved(), *want);
                    if (*want) {
                        resolved_event = got->take_fault_resolved();
                        ++faults;
                    }
                }
            }
        } else if (op < 78) {
            // Mostly export inside the covered run around a mapped unit, else anywhere.
            uint64_t e_iova = iova;
            uint64_t e_size = size;
            if (pick(0, 3) != 0 && model.owner[iova] >= 0) {
                uint64_t run_end = iova;
                while (run_end < kUnits && model.owner[run_end] >= 0) ++run_end;
                e_size = pick(1, run_end - iova);
            }
            auto got = mapper.export_range(Iova{e_iova}, e_size);
            const int want_err = model.export_errno(e_iova, e_size);
            if (want_err != 0) {
                EXPECT_ERR(got, want_err);
            } else {
                ASSERT_OK(got);
                const bool spans = model.owner[e_iova] != model.owner[e_iova + e_size - 1];
                ASSERT_EQ(*got, model.export_regions(e_iova, e_size));
                recent.emplace_back(e_iova, e_size);
                ++exports_ok;
                if (spans && got->size() < 2) ++merged_exports;
            }
        } else if (op < 91) {
            // Mostly release something exported, sometimes a random (unknown) range.
            uint64_t r_iova = iova;
            uint64_t r_size = size;
            if (!recent.empty() && pick(0, 3) != 0) {
                const size_t i = pick(0, recent.size() - 1);
                std::tie(r_iova, r_size) = recent[i];
                recent[i] = recent.back();
                recent.pop_back();
            }
            auto got = mapper.release(Iova{r_iova}, r_size);
            const bool was_resolved = model.resolved_signaled;
            const int want_err = model.release(r_iova, r_size);
            if (want_err != 0) {
                EXPECT_ERR(got, want_err);
            } else {
                ASSERT_OK(got);
            }
            if (!was_resolved && model.resolved_signaled) ++resolutions;
        } else if (op < 97) {
            auto got = mapper.start_export_session();
            const int want_err = model.start_session();
            if (want_err != 0) {
                EXPECT_ERR(got, want_err);
            } else {
                ASSERT_OK(got);
                fault_event = std::move(*got);
                resolved_event = EventFd();
                recent.clear();
            }
        } else {
            EventFd ev = mapper.reset_domain();
            ASSERT_EQ(ev.valid(), model.reset());
            if (ev.valid()) {
                resolved_event = std::move(ev);
                ++faults;
            }
        }

        ASSERT_EQ(mapper.size(), model.live());
        ASSERT_EQ(mapper.exported_count(), model.exported.size());
        if (fault_event.valid()) {
            ASSERT_EQ(fault_event.is_signaled().value(), model.fault_signaled);
        }
        if (resolved_event.valid()) {
            ASSERT_EQ(resolved_event.is_signaled().value(), model.resolved_signaled);
        }
    }
    EXPECT_GT(adds_ok, 100);
    EXPECT_GT(overlaps, 100);
    EXPECT_GT(exports_ok, 100);
    EXPECT_GE(merged_exports, 5);
    EXPECT_GT(faults, 10);
    EXPECT_GT(resolutions, 5);
    std::printf("seed %llu: %d adds, %d overlaps, %d exports (%d merged across mappings), %d faults, %d resolved\n",
                static_cast<unsigned long long>(seed), adds_ok, overlaps, exports_ok, merged_exports, faults,
                resolutions);
}

TEST(BasicMemoryMapperProperty, AgreesWithReferenceModelSeed1) { run(1); }
TEST(BasicMemoryMapperProperty, AgreesWithReferenceModelSeed2) { run(2); }
TEST(BasicMemoryMapperProperty, AgreesWithReferenceModelSeed3) { run(0xc0c0); }
TEST(BasicMemoryMapperProperty, AgreesWithReferenceModelSeed4) { run(20260801); }

}  // namespace
}  // namespace coiommu::viommu
