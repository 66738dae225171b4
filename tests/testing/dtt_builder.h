// DttBuilder: a memfd-backed guest with a real multi-level DTT laid out the way the Linux CoIOMMU
// frontend does it (engine/README.md, "DTT format"), for tests of the host-side walker and pinner.
//
// Layout: one RAM region [0, ram_bytes). The DTT's table pages come from a pool at the top of
// RAM (the last pool_pages pages); gfns below pool_first_gfn() are free for test data.
// All logic lives in emulator::GuestDtt; this is a thin owner + convenience wrapper.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/base/addr.h"
#include "engine/base/result.h"
#include "engine/core/dtt.h"
#include "engine/emulator/guest_dtt.h"
#include "engine/guest/guest_memory.h"

namespace coiommu::testing {

struct DttBuilderOptions {
    uint64_t levels = 4;
    uint64_t ram_bytes = uint64_t{16} << 20;  // 16 MiB = 4096 gfns
    uint64_t pool_pages = 64;
    uint32_t ncpus = 4;
};

class DttBuilder {
public:
    [[nodiscard]] static Result<DttBuilder> create(const DttBuilderOptions& opts = {});

    [[nodiscard]] const GuestMemory& mem() const { return *mem_; }
    [[nodiscard]] emulator::GuestDtt& dtt() { return *dtt_; }
    [[nodiscard]] const emulator::GuestDtt& dtt() const { return *dtt_; }
    [[nodiscard]] Gpa root() const { return dtt_->dtt_root(); }
    [[nodiscard]] uint64_t levels() const { return dtt_->levels(); }
    // First gfn of the table-page pool; gfns below it hold no DTT pages.
    [[nodiscard]] Gfn pool_first_gfn() const { return pool_first_; }

    // A host walker over this DTT.
    [[nodiscard]] Result<core::DttWalker> walker() const;

    // Shorthands for dtt().
    [[nodiscard]] Result<bool> mark(Gfn gfn) { return dtt_->mark(gfn); }
    [[nodiscard]] Status unmark(Gfn gfn) { return dtt_->unmark(gfn); }
    [[nodiscard]] Result<uint32_t> entry(Gfn gfn) const { return dtt_->entry(gfn); }
    [[nodiscard]] bool pinned(Gfn gfn) const { return dtt_->pinned(gfn); }
    [[nodiscard]] Status set_entry(Gfn gfn, uint32_t value) { return dtt_->set_entry(gfn, value); }

private:
    DttBuilder(std::unique_ptr<GuestMemory> mem, std::unique_ptr<emulator::GuestDtt> dtt, Gfn pool_first)
        : mem_(std::move(mem)), dtt_(std::move(dtt)), pool_first_(pool_first) {}

    // Heap-held so the GuestDtt's pointer to the memory survives moves of the builder.
    std::unique_ptr<GuestMemory> mem_;
    std::unique_ptr<emulator::GuestDtt> dtt_;
    Gfn pool_first_{};
};

}  // namespace coiommu::testing
