// Shared arrangement for pinner/request tests: a 4-level DTT in 16 MiB of memfd guest RAM, a
// FakeBackend container and the host pin table.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <optional>

#include "engine/core/dtt.h"
#include "engine/core/pin_table.h"
#include "engine/core/pinner.h"
#include "engine/core/spec.h"
#include "engine/dma/fake_backend.h"
#include "tests/testing/dtt_builder.h"
#include "tests/testing/expect.h"

namespace coiommu::core::test {

// Gfns in the data area (below the DTT pool), on distinct leaf pages unless said otherwise.
inline constexpr Gfn kGfnA{0x10};
inline constexpr Gfn kGfnB{0x11};   // same leaf page as kGfnA
inline constexpr Gfn kGfnC{0x412};  // the next leaf page
// Beyond the 16 MiB of RAM but inside a 4-level DTT's reach: the DTT can describe it, the host
// must never map it.
inline constexpr Gfn kGfnBeyondRam{0x100000};

[[nodiscard]] inline Gpa gpa_of(Gfn gfn) { return Gpa{raw(gfn) << kPageShift}; }
[[nodiscard]] inline Iova iova_of(Gfn gfn) { return Iova{raw(gfn) << kPageShift}; }

// A container that allows `limit` live mappings.
[[nodiscard]] inline dma::FakeConfig limited_container(uint64_t limit) {
    dma::FakeConfig cfg;
    cfg.entry_limit = limit;
    return cfg;
}

class PinFixture {
public:
    explicit PinFixture(dma::FakeConfig cfg = {}, testing::DttBuilderOptions opts = {})
        : builder_(testing::DttBuilder::create(opts).value()),
          backend_(std::move(cfg)),
          table_(PinTable::create(builder_.mem().gfn_span()).value()),
          walker_(builder_.walker().value()),
          ctx_{builder_.mem(), backend_, table_} {}
    PinFixture(const PinFixture&) = delete;
    PinFixture& operator=(const PinFixture&) = delete;

    [[nodiscard]] testing::DttBuilder& guest() { return builder_; }
    [[nodiscard]] emulator::GuestDtt& dtt() { return builder_.dtt(); }
    [[nodiscard]] const GuestMemory& mem() const { return builder_.mem(); }
    [[nodiscard]] dma::FakeBackend& backend() { return backend_; }
    [[nodiscard]] PinTable& table() { return table_; }
    [[nodiscard]] DttWalker& walker() { return walker_; }
    [[nodiscard]] const PinContext& ctx() const { return ctx_; }

    [[nodiscard]] Result<PinReport> pin(Gfn gfn) { return pin_page(ctx_, walker_, gfn); }
    [[nodiscard]] UnpinResult unpin(Gfn gfn, Force force = Force::No) { return unpin_page(ctx_, walker_, gfn, force); }
    // The leaf entry as the guest sees it (0xdeadbeef when absent, so a comparison fails loudly).
    [[nodiscard]] uint32_t entry(Gfn gfn) const { return builder_.entry(gfn).value_or(0xdeadbeefu); }
    [[nodiscard]] uint64_t map_calls() const { return backend_.counters().map_calls.load(); }
    [[nodiscard]] uint64_t unmap_calls() const { return backend_.counters().unmap_calls.load(); }

private:
    testing::DttBuilder builder_;
    dma::FakeBackend backend_;
    PinTable table_;
    DttWalker walker_;
    PinContext ctx_;
};

}  // namespace coiommu::core::test
