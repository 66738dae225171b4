// ThreadSanitizer suppressions for the load generator's tests (linked into both binaries; the
// function is only defined in -fsanitize=thread builds).
//
// TSan cannot see the happens-before edge between the emulated guest's writes to guest RAM (a
// batch's PinPageInfo and gfn list) and the engine's reads of them: the edge runs through the
// notify slot, which the guest (GuestDriver's BAR2 mapping) and the engine (the device's mapping)
// reach through two different mmaps of the same memfd, and TSan tracks synchronisation by virtual
// address. Guest RAM is also hostile by contract (engine/guest/guest_memory.h): the engine copies
// it out and validates every value, so races on it are the guest's to make. Only accesses made
// through GuestMemory's copy helpers and the guest driver's batch write are exempt; the atomics
// (DTT entries, notify slots) and all of the load generator's own state stay checked.
#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_suppressions() {
    return "race:coiommu::GuestMemory::read_obj\n"
           "race:coiommu::GuestMemory::write_obj\n"
           "race:coiommu::emulator::VcpuDriver::request_pins\n";
}
#endif
