// Pinning maps under a versioned bpffs directory so they outlive the process and can be read by
// bpftool (`bpftool -j map dump pinned /sys/fs/bpf/coiommu/v2/<map>`) or another reader.
//
// Layout: <root>/v<COIOMMU_BPF_ABI_VERSION>/<map name>, root = /sys/fs/bpf/coiommu by default.
// A PinSet removes what it pinned (and the empty directories) on destruction unless Keep::Yes.
// A pin left over from an earlier run is replaced (bpf_obj_pin cannot overwrite).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/base/result.h"

namespace coiommu::bpf {

enum class Keep : bool { No, Yes };

inline constexpr std::string_view kDefaultPinRoot = "/sys/fs/bpf/coiommu";

struct PinOptions {
    std::string root{kDefaultPinRoot};
    Keep keep = Keep::No;
};

// "<root>/v2".
[[nodiscard]] std::string versioned_pin_dir(std::string_view root);

// Makes sure /sys/fs/bpf is a bpffs, mounting one when it is not (as bpftool does).
[[nodiscard]] Status ensure_bpffs();

class PinSet {
public:
    PinSet() = default;
    ~PinSet();
    PinSet(const PinSet&) = delete;
    PinSet& operator=(const PinSet&) = delete;
    PinSet(PinSet&& other) noexcept;
    PinSet& operator=(PinSet&& other) noexcept;

    // Creates <root>/v2 (and bpffs when root lies under /sys/fs/bpf).
    [[nodiscard]] static Result<PinSet> create(const PinOptions& options);

    // Pins the object behind `fd` as <dir>/<name>. EEXIST never happens: a stale pin is replaced.
    [[nodiscard]] Status pin(std::string_view name, int fd);

    [[nodiscard]] const std::string& dir() const { return dir_; }
    [[nodiscard]] const std::vector<std::string>& paths() const { return paths_; }
    [[nodiscard]] Keep keep() const { return keep_; }
    void set_keep(Keep keep) { keep_ = keep; }

    // Removes every pin now (also what the destructor does unless Keep::Yes).
    void remove_all();

private:
    std::string root_;
    std::string dir_;
    std::vector<std::string> paths_;
    Keep keep_ = Keep::No;
};

// Removes <root>/v2/* and the directories (for cleanup of kept pins, tests, scripts).
[[nodiscard]] Status remove_pins(std::string_view root);

}  // namespace coiommu::bpf
