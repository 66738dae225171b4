// Extracting the verifier's reason from libbpf's program load log (pure string work): what the
// loader reports instead of "needs root" when, as root, the kernel refuses one of our programs.
#include <gtest/gtest.h>

#include "bpf/loader/bpf_util.h"

namespace coiommu::bpf::detail {
namespace {

// Shaped like libbpf 1.1's warning (the log of the 6.1 refusal fixed in hist.bpf.h).
constexpr const char* kLog =
    "libbpf: prog 'vfio_dma_exit': BPF program load failed: Permission denied\n"
    "libbpf: prog 'vfio_dma_exit': -- BEGIN PROG LOAD LOG --\n"
    "0: R1=ctx(off=0,imm=0) R10=fp0\n"
    "110: (db) lock *(u64 *)(r2 +0) += r3\n"
    "R2 unbounded memory access, make sure to bounds check any such access\n"
    "processed 97 insns (limit 1000000) max_states_per_insn 0 total_states 6 peak_states 6 mark_read 4\n"
    "-- END PROG LOAD LOG --\n";

TEST(VerifierReason, IsTheLastLineBeforeTheSummaryWithTheProgramName) {
    EXPECT_EQ(verifier_reason(kLog),
              "prog 'vfio_dma_exit': R2 unbounded memory access, make sure to bounds check any such access");
}

TEST(VerifierReason, MessagesWithoutALoadLogHaveNone) {
    EXPECT_EQ(verifier_reason("libbpf: failed to load object 'engine_bpf'\n"), "");
    EXPECT_EQ(verifier_reason(""), "");
}

TEST(VerifierReason, AnEmptyLogHasNone) {
    EXPECT_EQ(verifier_reason("libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\n-- END PROG LOAD LOG --\n"), "");
}

TEST(VerifierReason, ALogWithoutASummaryEndsWithItsReason) {
    EXPECT_EQ(verifier_reason("-- BEGIN PROG LOAD LOG --\nR1 type=scalar expected=fp\n-- END PROG LOAD LOG --"),
              "R1 type=scalar expected=fp");
}

}  // namespace
}  // namespace coiommu::bpf::detail
