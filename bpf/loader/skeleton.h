// Skeleton<T>: the RAII owner of one bpftool-generated skeleton (T = <name>_bpf).
//
// Uses the C++ statics bpftool 7.1 emits (T::open/load/attach/destroy/elf_bytes). Move-only;
// the destructor detaches every link and frees maps and programs. Each step returns a Status
// carrying the errno libbpf reported (EPERM/EACCES get the privilege hint).
//
//   ASSIGN_OR_RETURN-style use:
//     auto skel = Skeleton<vfio_dma_bpf>::open();      // parse the embedded ELF
//     skel->rodata->targ_tgid = pid;                     // load-time config
//     skel.load(); skel.attach();                        // verify + attach every program
//
// Thread-safety: none; one owner thread. The map fds it exposes may be read from any thread.
#pragma once

#include <bpf/libbpf.h>

#include <cerrno>
#include <string>
#include <utility>

#include "bpf/loader/bpf_util.h"
#include "bpf/loader/privileges.h"
#include "engine/base/result.h"

namespace coiommu::bpf {

template <class T>
class Skeleton {
public:
    Skeleton() = default;
    ~Skeleton() { reset(); }
    Skeleton(const Skeleton&) = delete;
    Skeleton& operator=(const Skeleton&) = delete;
    Skeleton(Skeleton&& other) noexcept : skel_(std::exchange(other.skel_, nullptr)), name_(std::move(other.name_)) {}
    Skeleton& operator=(Skeleton&& other) noexcept {
        if (this != &other) {
            reset();
            skel_ = std::exchange(other.skel_, nullptr);
            name_ = std::move(other.name_);
        }
        return *this;
    }

    // Opens the embedded object (no kernel calls besides BTF probing). `name` labels errors.
    [[nodiscard]] static Result<Skeleton> open(const std::string& name, const bpf_object_open_opts* opts = nullptr) {
        errno = 0;
        T* raw = T::open(opts);
        const int err = errno;
        if (raw == nullptr) return coiommu::unexpected(bpf_error(err != 0 ? err : EINVAL, "open BPF skeleton " + name));
        Skeleton s;
        s.skel_ = raw;
        s.name_ = name;
        return s;
    }

    // Creates the maps and verifies/loads every program whose autoload is on.
    [[nodiscard]] Status load() {
        (void)detail::take_verifier_reason();  // only a refusal of this load counts
        const int rc = T::load(skel_);
        if (rc != 0) {
            // As root, EACCES from a load is the verifier refusing a program, not a privilege
            // problem: say which program and why.
            if (std::string reason = detail::take_verifier_reason(); !reason.empty()) {
                return make_error(-rc, "load BPF programs of " + name_ + ": the kernel's verifier refused " + reason +
                                           " (coiommu-trace -v prints the whole log)");
            }
            return coiommu::unexpected(bpf_error(-rc, "load BPF programs of " + name_));
        }
        return ok();
    }

    // Attaches every program that has an auto-attachable SEC() (tracepoints, fentry...).
    // Programs with a bare SEC("usdt") are attached by the caller and skipped here.
    [[nodiscard]] Status attach() {
        const int rc = T::attach(skel_);
        if (rc != 0) return coiommu::unexpected(bpf_error(-rc, "attach BPF programs of " + name_));
        return ok();
    }

    [[nodiscard]] T* get() const { return skel_; }
    T* operator->() const { return skel_; }
    T& operator*() const { return *skel_; }
    explicit operator bool() const { return skel_ != nullptr; }
    [[nodiscard]] const std::string& name() const { return name_; }

    // The embedded ELF object (what bpftool gen skeleton embedded).
    [[nodiscard]] static std::pair<const void*, size_t> elf_bytes() {
        size_t size = 0;
        const void* data = T::elf_bytes(&size);
        return {data, size};
    }

private:
    void reset() {
        if (skel_ != nullptr) T::destroy(std::exchange(skel_, nullptr));
    }

    T* skel_ = nullptr;
    std::string name_;
};

}  // namespace coiommu::bpf
