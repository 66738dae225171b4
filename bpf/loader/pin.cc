#include "bpf/loader/pin.h"

#include <bpf/bpf.h>
#include <dirent.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include <fmt/format.h>

#include "bpf/abi/hist.h"
#include "bpf/loader/privileges.h"
#include "engine/base/log.h"

namespace coiommu::bpf {

namespace {

constexpr const char* kBpffs = "/sys/fs/bpf";
constexpr long kBpfFsMagic = 0xcafe4a11;

Status mkdir_one(const std::string& path) {
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
        const int err = errno;
        return make_error(err, "mkdir " + path);
    }
    return ok();
}

}  // namespace

std::string versioned_pin_dir(std::string_view root) { return fmt::format("{}/v{}", root, COIOMMU_BPF_ABI_VERSION); }

Status ensure_bpffs() {
    struct statfs st {};
    if (::statfs(kBpffs, &st) == 0 && st.f_type == kBpfFsMagic) return ok();
    if (::mount("bpf", kBpffs, "bpf", 0, "mode=0700") != 0) {
        const int err = errno;
        return make_error(
            err, fmt::format("{} is not a bpffs and mounting one failed (run `mount -t bpf bpf {}`)", kBpffs, kBpffs));
    }
    CLOG_INFO("bpf", "mounted bpffs at {}", kBpffs);
    return ok();
}

PinSet::~PinSet() {
    if (keep_ == Keep::No) remove_all();
}

PinSet::PinSet(PinSet&& other) noexcept
    : root_(std::move(other.root_)),
      dir_(std::move(other.dir_)),
      paths_(std::exchange(other.paths_, {})),
      keep_(other.keep_) {}

PinSet& PinSet::operator=(PinSet&& other) noexcept {
    if (this != &other) {
        if (keep_ == Keep::No) remove_all();
        root_ = std::move(other.root_);
        dir_ = std::move(other.dir_);
        paths_ = std::exchange(other.paths_, {});
        keep_ = other.keep_;
    }
    return *this;
}

Result<PinSet> PinSet::create(const PinOptions& options) {
    if (options.root.empty() || options.root.front() != '/') {
        return make_error(EINVAL, "pin root must be an absolute path: '" + options.root + "'");
    }
    if (options.root.rfind(kBpffs, 0) == 0) {
        COIOMMU_TRY(ensure_bpffs());
    }
    PinSet set;
    set.root_ = options.root;
    set.dir_ = versioned_pin_dir(options.root);
    set.keep_ = options.keep;
    COIOMMU_TRY(mkdir_one(set.root_));
    COIOMMU_TRY(mkdir_one(set.dir_));
    return set;
}

Status PinSet::pin(std::string_view name, int fd) {
    const std::string path = fmt::format("{}/{}", dir_, name);
    if (::unlink(path.c_str()) == 0) CLOG_WARN("bpf", "replaced a stale pin at {}", path);
    if (bpf_obj_pin(fd, path.c_str()) != 0) {
        const int err = errno;
        return coiommu::unexpected(bpf_error(err, "pin " + path));
    }
    paths_.push_back(path);
    return ok();
}

void PinSet::remove_all() {
    for (const auto& p : paths_) {
        if (::unlink(p.c_str()) != 0 && errno != ENOENT) {
            CLOG_WARN("bpf", "unpin {}: errno {}", p, errno);
        }
    }
    paths_.clear();
    // Other pins (another instance, a kept run) keep the directories alive: ENOTEMPTY is fine.
    if (!dir_.empty()) (void)::rmdir(dir_.c_str());
    if (!root_.empty()) (void)::rmdir(root_.c_str());
}

Status remove_pins(std::string_view root) {
    const std::string dir = versioned_pin_dir(root);
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
        const int err = errno;
        if (err == ENOENT) return ok();
        return make_error(err, "open " + dir);
    }
    Status status = ok();
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name == "." || name == "..") continue;
        std::string path = dir;
        path += '/';
        path += name;
        if (::unlink(path.c_str()) != 0 && status) status = make_error(errno, "unlink " + path);
    }
    ::closedir(d);
    if (::rmdir(dir.c_str()) != 0 && errno != ENOENT && status) status = make_error(errno, "rmdir " + dir);
    const std::string root_str(root);
    (void)::rmdir(root_str.c_str());
    return status;
}

}  // namespace coiommu::bpf
