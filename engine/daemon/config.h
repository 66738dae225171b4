// coiommud's configuration: a config file of `key = value` lines and command-line flags. One
// table of keys (config.cc) gives both: every key is `key_with_underscores` in the file and
// `--key-with-dashes` on the command line (`--key value` or `--key=value`; '_' is accepted in a
// flag too), with the same grammar, validation and help. `--config FILE` (repeatable) is read
// first, in order; the other flags override it wherever they appear, and a later flag overrides
// an earlier one. usage() (--help) is printed from the same table, engine options included.
//
//   socket              path of the VMM socket (created 0600)       /run/coiommu/coiommud.sock
//   allowed_uids        uids whose VMMs may connect (comma list)     this process's uid (+ root)
//   max_sessions        concurrent VMs                               64
//   max_sessions_per_uid concurrent VMs of one uid, 0 = no cap       0
//   max_pending         connections waiting for their Hello          64
//   max_fds_per_session fds one session may make the daemon hold     auto: min(2132, fds for sessions)
//   max_fds_per_uid     fds the sessions of one uid may hold         auto: fds for sessions
//                       (fds for sessions: RLIMIT_NOFILE - max_pending - 128; fd_budget.h)
//   hello_timeout       time a connection has to send Hello          1s
//   setup_timeout       time a VMM has, from Hello, to reach Running 10s
//   io_timeout          time a reply may wait for the VMM to read    5s
//   engine              engine options (workers/config.h)            engine defaults
//   backends            DMA backends VMMs may choose                 vfio,iommufd,fake,null
//   max_guest_memory    highest guest-physical address a VM may use  1T
//   metrics_address     Prometheus endpoint, or `none`               127.0.0.1:9464
//   tracing             auto (attach BPF if permitted) | off         auto
//   log_level           debug|info|warn|error|off                    info
//   log_priority_prefix auto (when journald is stderr) | on | off    auto
//   duration            --demo: run time, 0 = until Ctrl-C           20s
//   demo_vcpus          --demo: vCPUs of the emulated VM (--vcpus)   4
//   demo_ram            --demo: guest RAM of the emulated VM (--ram) 512M
//
// Durations and sizes are engine/base/quantity.h's: "1.5s", "500ms", "2m" (a bare number is
// seconds; at most millisecond precision), "4096", "64K", "1.5G".
//
// Thread-safety: plain values and pure functions (load_config_file reads a file).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/base/log.h"
#include "engine/base/result.h"
#include "engine/daemon/server.h"
#include "engine/workers/config.h"

namespace coiommu::daemon {

enum class Mode : uint8_t { Service, Demo };
enum class TracingMode : uint8_t { Auto, Off };
enum class PriorityPrefix : uint8_t { Auto, On, Off };

inline constexpr std::string_view kDefaultSocket = "/run/coiommu/coiommud.sock";
inline constexpr uint32_t kMaxSessionsLimit = 4096;
inline constexpr uint32_t kMaxPendingLimit = 4096;
inline constexpr uint64_t kMaxFdsLimit = uint64_t{1} << 30;  // the kernel's fs.nr_open ceiling

struct DaemonConfig {
    Mode mode = Mode::Service;
    std::string config_path;  // the file read, if any
    std::string socket_path{kDefaultSocket};
    bool socket_activated = false;    // set by coiommud when systemd passed the listening socket
    std::vector<uid_t> allowed_uids;  // empty: this process's effective uid, and root
    uint32_t max_sessions = 64;
    uint32_t max_sessions_per_uid = 0;  // 0: no cap below max_sessions
    uint32_t max_pending = 64;
    uint64_t max_fds_per_session = 0;  // 0: auto (derive_fd_limits)
    uint64_t max_fds_per_uid = 0;      // 0: auto
    std::chrono::milliseconds hello_timeout{1'000};
    std::chrono::milliseconds setup_timeout{10'000};
    std::chrono::milliseconds io_timeout{5'000};
    std::string engine_opts;  // as given; parsed into `engine` by finalize()
    workers::EngineConfig engine;
    std::vector<std::string> backends{"vfio", "iommufd", "fake", "null"};
    uint64_t max_guest_memory = uint64_t{1} << 40;
    std::string metrics_address = "127.0.0.1:9464";  // "none": no exporter
    TracingMode tracing = TracingMode::Auto;
    log::Level log_level = log::Level::Info;
    PriorityPrefix priority_prefix = PriorityPrefix::Auto;
    std::chrono::milliseconds duration{20'000};  // demo; 0 = until a signal
    uint32_t demo_vcpus = 4;
    uint64_t demo_ram = uint64_t{512} << 20;

    // The server options this configuration describes.
    [[nodiscard]] ServerOptions server_options() const;
};

// The engine defaults of --demo: LRU unpinning every second so that a short run shows unpinning.
[[nodiscard]] workers::EngineConfig demo_engine_defaults();

// The known key at most two edits from `key` ("" when none): the "did you mean" of a typo.
[[nodiscard]] std::string_view closest_key(std::string_view key);
// Sets one key (as the file spells it); surrounding blanks of `value` are ignored. Errors: EINVAL
// "unknown key 'x'" (naming the closest key when there is one) or "<key>: <what is wrong>".
[[nodiscard]] Status apply_option(DaemonConfig& cfg, std::string_view key, std::string_view value);
// Applies `key = value` lines ('#' starts a comment anywhere, blank lines ignored, the last
// occurrence of a key wins). Errors: EINVAL naming `origin:line` and the problem.
[[nodiscard]] Status apply_config_text(DaemonConfig& cfg, std::string_view text, std::string_view origin);
// Reads and applies a file; sets cfg.config_path. Errors: the errno of opening or reading it
// ("config file PATH: No such file or directory"), or apply_config_text's.
[[nodiscard]] Status load_config_file(DaemonConfig& cfg, const std::string& path);
// Parses the engine options over the mode's defaults and checks cross-field rules.
// Errors: EINVAL with the offending key.
[[nodiscard]] Status finalize(DaemonConfig& cfg);

enum class CliAction : uint8_t { Run, Help, Version };
struct ParsedArgs {
    CliAction action = CliAction::Run;
    DaemonConfig config;
};

// Parses argv[1..] with CLI11 and prints nothing: --config files first, then every other flag;
// then finalize(). Help and Version are returned for the caller to print (usage(); the version
// line). Errors: a config file's (its errno, or EINVAL naming file:line); otherwise EINVAL with a
// message for the user: an unknown flag names the closest one ("did you mean '--max-sessions'?"),
// a flag without its value says so, and so does a flag whose value is another option
// ("--socket --help").
[[nodiscard]] Result<ParsedArgs> parse_args(const std::vector<std::string_view>& args);
// The --help text: every flag with its grammar and default, the engine options, the signals.
[[nodiscard]] std::string usage();

// The feature bits the configured backends allow (plus QueryMapped when `fake` is allowed).
[[nodiscard]] uint64_t features_for(const std::vector<std::string>& backends);

}  // namespace coiommu::daemon
