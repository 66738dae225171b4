/*
 * coiommu/client.h: the C ABI of the coiommud VMM client, libcoiommu-client.so.0.
 *
 * coiommud pins guest memory for VFIO passthrough on demand (CoIOMMU). A VMM (QEMU, crosvm through
 * bindgen, a test) exposes the CoIOMMU PCI device to its guest and hands the device's work to the
 * daemon over a Unix socket: this library is that VMM side. The protocol behind it is
 * engine/daemon/PROTOCOL.md; this header needs neither C++ nor the protocol's structs.
 *
 *   struct coiommu_client *c;
 *   coiommu_client_new(&c);
 *   coiommu_client_connect(c, "/run/coiommu/coiommud.sock", "my-vmm", COIOMMU_CLIENT_FEATURES_ALL, &hello);
 *   coiommu_client_set_memory(c, regions, n);                 guest RAM memfds (F_SEAL_SHRINK) + GPAs
 *   coiommu_client_set_topology(c, vcpus, bdfs, m, &notifymap_fd, &topologymap_fd);   BAR2 / BAR4
 *   coiommu_client_set_backend_vfio(c, container_fd, 0, &backend);     or _iommufd, _fake, _null
 *   coiommu_client_set_triggers(c, eventfds, vcpus, &running);         the BAR0 + 0x18 + i ioeventfds
 *   ... forward BAR0 traps: coiommu_client_mmio_write / coiommu_client_mmio_read
 *   ... balloon: coiommu_client_balloon_unpin      statistics: coiommu_client_get_stats
 *   coiommu_client_close(c, &info);                the daemon unmaps everything
 *   coiommu_client_free(c);
 *
 * Surviving a daemon restart (protocol minor 2, COIOMMU_CLIENT_FEATURE_RESUME; engine/daemon/PROTOCOL.md,
 * "Resumable sessions"): connect with the feature, keep the third fd of
 * coiommu_client_set_topology_resumable (the host record) next to the notifymap and topologymap, and
 * when a call returns -EPIPE, -ECONNRESET or -ENOTCONN:
 *   coiommu_client_reconnect(c, path, 30000, &hello);      same name and features, numbering carried on
 *   coiommu_client_set_memory(c, regions, n);                the same regions
 *   coiommu_client_resume(c, vcpus, bdfs, m, notifymap_fd, topologymap_fd, record_fd, &resumed);
 *   coiommu_client_set_backend_vfio(c, container_fd, 0, NULL);   the same container (or IOAS, fake state)
 *   coiommu_client_set_triggers(c, eventfds, vcpus, &running);   the same eventfds
 *   then re-send the call that failed. The guest keeps every pin; nothing is mapped twice.
 *
 * Conventions (engine/client/README.md has the full text):
 *  - Every function that can fail returns 0 or a negative errno (-EINVAL, -ENOENT, ...); values
 *    come back through out-parameters. An Error from the daemon becomes its errno.
 *  - coiommu_client_last_error() is the text of the handle's most recent call ("" after a success).
 *  - File descriptors passed in are borrowed (the library sends or dups them; the caller keeps and
 *    closes its own). File descriptors passed out (notifymap, topologymap) belong to the caller and
 *    carry O_CLOEXEC.
 *  - Calls on one handle are serialised (one request in flight); several handles are independent.
 *    last_error's pointer is valid until the next call on the same handle.
 *  - A NULL handle or a NULL required pointer is -EINVAL. The library never raises SIGPIPE, never
 *    writes to stdout/stderr and never throws across this boundary.
 *
 * ABI: symbols are versioned (node COIOMMU_CLIENT_0.1; coiommu_client_set_backend_iommufd, added
 * with protocol minor 1, in COIOMMU_CLIENT_0.2; resumable sessions, protocol minor 2, in
 * COIOMMU_CLIENT_0.3); structs are fixed for soname
 * libcoiommu-client.so.0, except coiommu_client_stats, which only grows at its end (callers pass
 * sizeof). Reserved and flags fields must be 0.
 */
#ifndef COIOMMU_CLIENT_H
#define COIOMMU_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define COIOMMU_CLIENT_API __attribute__((visibility("default")))
#else
#define COIOMMU_CLIENT_API
#endif

/* ---- Versions ------------------------------------------------------------------------------- */

/* This header's library version (the project's), encoded 0xMMmmpp by COIOMMU_CLIENT_VERSION. */
#define COIOMMU_CLIENT_VERSION_MAJOR 0
#define COIOMMU_CLIENT_VERSION_MINOR 1
#define COIOMMU_CLIENT_VERSION_PATCH 0
#define COIOMMU_CLIENT_VERSION \
    ((COIOMMU_CLIENT_VERSION_MAJOR << 16) | (COIOMMU_CLIENT_VERSION_MINOR << 8) | COIOMMU_CLIENT_VERSION_PATCH)
#define COIOMMU_CLIENT_VERSION_STRING "0.1.0"

/* The wire protocol version this library speaks (coiommu_client_hello.version). */
#define COIOMMU_CLIENT_PROTOCOL_VERSION 1
/* The additions within it this library knows (1: the iommufd backend, 2: resumable sessions). */
#define COIOMMU_CLIENT_PROTOCOL_MINOR 2

/* The version of the library loaded at run time, encoded as COIOMMU_CLIENT_VERSION. A program
 * built against this header runs with any library of the same major version and a minor version
 * at least COIOMMU_CLIENT_VERSION_MINOR. */
COIOMMU_CLIENT_API uint32_t coiommu_client_version(void);

/* ---- Protocol constants ----------------------------------------------------------------------- */

/* Hello feature bits: what the VMM would like to use. The daemon offers the subset it allows. */
#define COIOMMU_CLIENT_FEATURE_VFIO_BACKEND 0x1ull
#define COIOMMU_CLIENT_FEATURE_FAKE_BACKEND 0x2ull
#define COIOMMU_CLIENT_FEATURE_NULL_BACKEND 0x4ull
#define COIOMMU_CLIENT_FEATURE_QUERY_MAPPED 0x8ull     /* coiommu_client_query_mapped (fake backend) */
#define COIOMMU_CLIENT_FEATURE_IOMMUFD_BACKEND 0x10ull /* protocol minor 1 */
#define COIOMMU_CLIENT_FEATURES_ALL 0x1full
/* Protocol minor 2, opt-in (not in _ALL): the VMM keeps the host record and resumes the session
 * with a restarted daemon; a daemon shutdown then detaches the session instead of tearing it down. */
#define COIOMMU_CLIENT_FEATURE_RESUME 0x20ull

#define COIOMMU_CLIENT_MAX_REGIONS 64          /* regions per coiommu_client_set_memory */
#define COIOMMU_CLIENT_MAX_VCPUS 1024          /* vCPUs (notify slots, triggers) */
#define COIOMMU_CLIENT_MAX_ENDPOINTS 4095      /* endpoint BDFs per coiommu_client_set_topology */
#define COIOMMU_CLIENT_MAX_BALLOON_RANGES 1024 /* ranges per coiommu_client_balloon_unpin */
#define COIOMMU_CLIENT_MAX_MMIO_LEN 8          /* bytes per BAR0 access */
#define COIOMMU_CLIENT_NAME_MAX 31             /* bytes of the VMM name the daemon logs */

/* ---- The device the VMM exposes to its guest (engine/core/spec.h) --------------------------- */

#define COIOMMU_CLIENT_PCI_VENDOR_ID 0x1234
#define COIOMMU_CLIENT_PCI_DEVICE_ID 0xabcd
#define COIOMMU_CLIENT_PCI_REVISION_ID 0x10
#define COIOMMU_CLIENT_PCI_CLASS_CODE 0xff /* class 0xff, subclass 0xff, prog-if 0 */

/* Three 64-bit prefetchable BARs of 0x2000 bytes: BAR0 registers (trapped and forwarded with
 * coiommu_client_mmio_*, except the trigger bytes, which are ioeventfds), BAR2 the notifymap
 * memfd (RW), BAR4 the topologymap memfd (RO, sealed). */
#define COIOMMU_CLIENT_BAR_SIZE 0x2000
#define COIOMMU_CLIENT_MMIO_BAR 0
#define COIOMMU_CLIENT_NOTIFYMAP_BAR 2
#define COIOMMU_CLIENT_TOPOLOGYMAP_BAR 4

/* BAR0 registers: u64, 8-byte aligned, accessed with length 8. */
#define COIOMMU_CLIENT_REG_DTT_ROOT 0x00  /* GPA of the DMA tracking table's root (write-once) */
#define COIOMMU_CLIENT_REG_CMD 0x08       /* a command below; reads back 0 */
#define COIOMMU_CLIENT_REG_DTT_LEVEL 0x10 /* levels of the table, 1..7 (write-once) */
/* One trigger byte per vCPU from here: register trigger eventfd i as an ioeventfd at 0x18 + i. */
#define COIOMMU_CLIENT_REG_TRIGGER_BASE 0x18

#define COIOMMU_CLIENT_CMD_DEACTIVATE 0 /* refused by the device */
#define COIOMMU_CLIENT_CMD_ACTIVATE 1
#define COIOMMU_CLIENT_CMD_PARK_UNPIN 2
#define COIOMMU_CLIENT_CMD_UNPARK_UNPIN 3

/* ---- Types -------------------------------------------------------------------------------------- */

/* One connection to coiommud (one VM). Opaque. */
struct coiommu_client;

struct coiommu_client_hello {
    uint16_t version;          /* protocol version the daemon chose */
    uint16_t minor;            /* the daemon's additions within it (COIOMMU_CLIENT_PROTOCOL_MINOR; 0: older) */
    uint32_t session_id;       /* the daemon's id of this session (in its logs and metrics) */
    uint64_t features;         /* COIOMMU_CLIENT_FEATURE_* bits offered */
    uint32_t max_message_size; /* bytes per datagram */
    uint32_t reserved1;
};

/* One guest RAM region. */
struct coiommu_client_region {
    int fd;             /* memfd sealed with F_SEAL_SHRINK (borrowed for the call) */
    uint32_t flags;     /* 0 */
    uint64_t gpa;       /* 4 KiB aligned */
    uint64_t size;      /* bytes, a non-zero multiple of 4 KiB */
    uint64_t fd_offset; /* 4 KiB aligned: where the region starts in fd */
};

struct coiommu_client_backend_info {
    uint64_t entry_limit; /* DMA mappings the backend allows (iommufd: 4294967295, no limit) */
    char name[16];        /* "vfio", "iommufd", "fake" or "null", NUL-terminated */
};

enum coiommu_client_fake_latency {
    COIOMMU_CLIENT_FAKE_LATENCY_NONE = 0,
    COIOMMU_CLIENT_FAKE_LATENCY_TYPICAL = 1, /* a type1 map/unmap's cost, modelled */
};

/* A balloon range: count guest frames (4 KiB) from start_gfn. */
struct coiommu_client_gfn_range {
    uint64_t start_gfn;
    uint64_t count;
};

enum coiommu_client_balloon_result {
    COIOMMU_CLIENT_BALLOON_SUCCESS = 0, /* every page is unpinned: the balloon may release them */
    COIOMMU_CLIENT_BALLOON_FAILED = 1,  /* a page is still in use: do not release */
};

/* The session's statistics: a fixed subset of the engine's (exporter/METRICS.md names them).
 * Counters only grow; gauges are current values. Append-only: new fields go at the end. */
struct coiommu_client_stats {
    /* device */
    uint32_t active;     /* 1 once the device accepted ACTIVATE */
    uint32_t park_count; /* PARK_UNPIN depth */
    uint64_t bad_mmio_accesses;
    uint64_t activate_refused;
    uint64_t trigger_signalled; /* trigger bytes forwarded as MMIO writes */
    /* pin requests (one per guest notification) */
    uint64_t requests; /* requests_single + requests_batch */
    uint64_t requests_single;
    uint64_t requests_batch;
    uint64_t requests_failed; /* completed with at least one page left unpinned */
    uint64_t pages_requested;
    uint64_t pages_pinned; /* newly pinned (mapped) */
    uint64_t pages_already_pinned;
    uint64_t pin_failures; /* pages that could not be pinned, every reason */
    /* unpinning (LRU and balloon) */
    uint64_t pages_unpinned;
    uint64_t balloon_success;
    uint64_t balloon_failed;
    /* DMA backend calls (a coalesced extent is one call) */
    uint64_t dma_map_calls;
    uint64_t dma_unmap_calls;
    uint64_t dma_call_failures; /* map and unmap */
    uint64_t dma_bytes_mapped;
    uint64_t dma_bytes_unmapped;
    /* gauges */
    uint64_t pinned_pages; /* pages pinned now */
    uint64_t dma_entries;  /* live mappings in the backend */
    uint64_t dma_entry_limit;
    uint64_t queue_depth; /* pin requests waiting for a worker */
    uint64_t guest_ram_bytes;
    uint64_t vcpus;
};

/* What a restarted daemon found in the host record (coiommu_client_resume). */
struct coiommu_client_resume_info {
    uint64_t extents;     /* mapped extents it took over */
    uint64_t pages;       /* the pages in them */
    uint64_t in_progress; /* map/unmap calls the dead daemon left half done, settled with the backend */
    uint32_t active;      /* 1: the device had accepted ACTIVATE (the guest's registers are restored) */
    uint32_t reserved;
};

struct coiommu_client_close_info {
    uint64_t dma_entries_after; /* live mappings left in the backend (0 unless a VFIO container is shared) */
    uint64_t pages_unpinned;    /* pages the engine unmapped at teardown */
};

/* ---- Handles ------------------------------------------------------------------------------------ */

/* A new, unconnected handle in *out. Errors: -EINVAL (out NULL), -ENOMEM. */
COIOMMU_CLIENT_API int coiommu_client_new(struct coiommu_client** out);

/* Releases the handle (NULL: nothing). A session not closed with coiommu_client_close ends as if
 * the VMM had died: the daemon tears it down and unmaps everything, without a reply. */
COIOMMU_CLIENT_API void coiommu_client_free(struct coiommu_client* c);

/* The text of the handle's most recent call: "" after a success, never NULL. Valid until the next
 * call on the handle. A NULL handle gets a static text. */
COIOMMU_CLIENT_API const char* coiommu_client_last_error(const struct coiommu_client* c);

/* How long one request may wait for the daemon (default 30000 ms; applies to later calls, also
 * across connect). Errors: -EINVAL for 0. */
COIOMMU_CLIENT_API int coiommu_client_set_timeout(struct coiommu_client* c, uint32_t timeout_ms);

/* ---- The session, in protocol order ---------------------------------------------------------------- */

/* Connects to the daemon's SOCK_SEQPACKET socket and says Hello. vmm_name (may be NULL) is logged by
 * the daemon (first COIOMMU_CLIENT_NAME_MAX bytes). hello (may be NULL) receives the negotiated
 * version and session. Errors: connect's errno (-ENOENT, -ECONNREFUSED, -ENAMETOOLONG, ...); the
 * daemon's (-EACCES: this uid is not allowed, -EBUSY: too many sessions, -EPROTONOSUPPORT);
 * -EISCONN when the handle is connected. */
COIOMMU_CLIENT_API int coiommu_client_connect(struct coiommu_client* c, const char* socket_path, const char* vmm_name,
                                              uint64_t features, struct coiommu_client_hello* hello);

/* The same over an already connected socket (e.g. one a sandbox handed over); sock_fd is
 * borrowed (the handle keeps a duplicate). */
COIOMMU_CLIENT_API int coiommu_client_connect_fd(struct coiommu_client* c, int sock_fd, const char* vmm_name,
                                                 uint64_t features, struct coiommu_client_hello* hello);

/* Guest RAM: 1..COIOMMU_CLIENT_MAX_REGIONS regions. The daemon maps each memfd itself; VFIO maps
 * use IOVA = GPA. Errors: -EINVAL (count, flags, or the daemon's: an unsealed memfd, overlap,
 * misalignment, memory beyond its limit). */
COIOMMU_CLIENT_API int coiommu_client_set_memory(struct coiommu_client* c, const struct coiommu_client_region* regions,
                                                 size_t count);

/* The device: vcpus (1..1024) notify slots and the endpoints' BDFs (bus << 8 | devfn) allowed to
 * request pins. *notifymap_fd (map RW at BAR2) and *topologymap_fd (map RO at BAR4) are the
 * caller's to close; both are -1 on failure. */
COIOMMU_CLIENT_API int coiommu_client_set_topology(struct coiommu_client* c, uint32_t vcpus, const uint16_t* bdfs,
                                                   size_t count, int* notifymap_fd, int* topologymap_fd);

/* coiommu_client_set_topology that also returns the host record: with COIOMMU_CLIENT_FEATURE_RESUME
 * negotiated, *record_fd is a memfd the daemon keeps its record of mappings in; the caller keeps it
 * open, never maps or writes it, and hands it to coiommu_client_resume. Without the feature
 * *record_fd is -1. All three are -1 on failure (protocol minor 2, symbol node COIOMMU_CLIENT_0.3). */
COIOMMU_CLIENT_API int coiommu_client_set_topology_resumable(struct coiommu_client* c, uint32_t vcpus,
                                                             const uint16_t* bdfs, size_t count, int* notifymap_fd,
                                                             int* topologymap_fd, int* record_fd);

/* The DMA backend; info may be NULL. entry_limit 0 is the default (VFIO: the kernel's).
 * vfio: container_fd (borrowed) has its groups attached and its IOMMU type set (type1v2).
 * fake, null: for tests and benchmarks (no device). Errors: -EPERM when the daemon does not allow
 * that backend; the kernel's errno of the daemon's VFIO_IOMMU_GET_INFO. */
COIOMMU_CLIENT_API int coiommu_client_set_backend_vfio(struct coiommu_client* c, int container_fd, uint64_t entry_limit,
                                                       struct coiommu_client_backend_info* info);
/* iommufd (protocol minor 1, symbol node COIOMMU_CLIENT_0.2): iommufd (borrowed) is the VMM's
 * /dev/iommu fd and ioas_id an IOAS in it with the devices attached. Errors: -ENOTSUP when the
 * daemon does not offer COIOMMU_CLIENT_FEATURE_IOMMUFD_BACKEND; -ENOENT when the IOAS does not exist. */
COIOMMU_CLIENT_API int coiommu_client_set_backend_iommufd(struct coiommu_client* c, int iommufd, uint32_t ioas_id,
                                                          struct coiommu_client_backend_info* info);
COIOMMU_CLIENT_API int coiommu_client_set_backend_fake(struct coiommu_client* c,
                                                       enum coiommu_client_fake_latency latency, uint64_t entry_limit,
                                                       struct coiommu_client_backend_info* info);
COIOMMU_CLIENT_API int coiommu_client_set_backend_null(struct coiommu_client* c, uint64_t entry_limit,
                                                       struct coiommu_client_backend_info* info);
/* A fake backend whose mapping set lives in state_fd (borrowed), a memfd from
 * coiommu_client_fake_state_create, so that it outlives the daemon as a container's mappings do:
 * how a VMM's tests exercise resume without a device. Needs COIOMMU_CLIENT_FEATURE_RESUME.
 * Errors: -ENOTSUP without it; -EINVAL for a state the daemon refuses (symbol node COIOMMU_CLIENT_0.3). */
COIOMMU_CLIENT_API int coiommu_client_set_backend_fake_shared(struct coiommu_client* c,
                                                              enum coiommu_client_fake_latency latency, int state_fd,
                                                              struct coiommu_client_backend_info* info);
/* A new, empty fake mapping set of entry_limit (1..2^24) mappings in *state_fd (the caller's,
 * O_CLOEXEC). Needs no handle. Errors: -EINVAL; memfd_create's errno (symbol node COIOMMU_CLIENT_0.3). */
COIOMMU_CLIENT_API int coiommu_client_fake_state_create(uint64_t entry_limit, int* state_fd);

/* Trigger eventfds (borrowed) for vCPUs 0..count-1, the same the VMM registers as ioeventfds at
 * BAR0 + 0x18 + vcpu. *running (may be NULL) is true once every vCPU has one: the engine exists and
 * BAR0 is served. Sent in order in as many messages as needed. */
COIOMMU_CLIENT_API int coiommu_client_set_triggers(struct coiommu_client* c, const int* eventfds, size_t count,
                                                   bool* running);

/* ---- Running ------------------------------------------------------------------------------------- */

/* A trapped BAR0 access of 1..8 bytes at offset (< 0x2000). A write returns once the device (and
 * the engine, for ACTIVATE and PARK/UNPARK) has acted. A read fills data with the device's answer.
 * Errors: -EINVAL (length, or an offset outside BAR0: the session goes on). */
COIOMMU_CLIENT_API int coiommu_client_mmio_write(struct coiommu_client* c, uint64_t offset, const void* data,
                                                 size_t len);
COIOMMU_CLIENT_API int coiommu_client_mmio_read(struct coiommu_client* c, uint64_t offset, void* data, size_t len);

/* Balloon inflation: unpins every page of the ranges (0..COIOMMU_CLIENT_MAX_BALLOON_RANGES; ranges
 * may be NULL when count is 0). *result says whether the balloon may release them. Errors (the
 * session goes on): -EAGAIN before ACTIVATE, -ECANCELED while the engine stops. */
COIOMMU_CLIENT_API int coiommu_client_balloon_unpin(struct coiommu_client* c,
                                                    const struct coiommu_client_gfn_range* ranges, size_t count,
                                                    enum coiommu_client_balloon_result* result);

/* The session's statistics into *stats. size is sizeof(*stats) as the caller was built: the
 * library writes min(size, its own size) bytes and zeroes the rest. Errors: -EINVAL for a size
 * smaller than this header's first version; -EPROTO when the daemon is from another revision
 * whose statistics layout differs. */
COIOMMU_CLIENT_API int coiommu_client_get_stats(struct coiommu_client* c, struct coiommu_client_stats* stats,
                                                size_t size);

/* Whether every byte of [iova, iova + size) is mapped in the session's backend (tests; the fake
 * backend and COIOMMU_CLIENT_FEATURE_QUERY_MAPPED only). Errors: -ENOTSUP, -EPERM. */
COIOMMU_CLIENT_API int coiommu_client_query_mapped(struct coiommu_client* c, uint64_t iova, uint64_t size,
                                                   bool* mapped);

/* ---- Resuming after the daemon went away (protocol minor 2) ------------------------------------- */

/* Drops the handle's connection (without Close: the daemon is gone or going) and connects to
 * socket_path again with the name and features of the handle's last connect, carrying on its request
 * numbering. While the daemon is not back (-ENOENT, -ECONNREFUSED, -EBUSY, a lost connection, ...)
 * it tries again after 10 ms, doubling to at most 500 ms, for up to timeout_ms in all. hello (may be
 * NULL) receives the new session's Hello. Then set_memory, resume, set_backend_*, set_triggers as
 * in the header's opening comment. A register write (coiommu_client_mmio_write) whose reply never
 * came and which the VMM sends again, identical, as its first write after the resume keeps its first
 * request number, so the daemon applies it at most once (a PARK_UNPIN is not counted twice).
 * Errors: -EINVAL (never connected, timeout_ms 0); the last attempt's errno once timeout_ms has
 * passed; a refusal that is not transient (-EACCES, -EPROTONOSUPPORT) at once.
 * (symbol node COIOMMU_CLIENT_0.3) */
COIOMMU_CLIENT_API int coiommu_client_reconnect(struct coiommu_client* c, const char* socket_path, uint32_t timeout_ms,
                                                struct coiommu_client_hello* hello);

/* In place of set_topology on a reconnected handle, after set_memory with the same regions: the same
 * vCPUs and endpoints and the three fds the first set_topology_resumable returned (borrowed). The
 * daemon checks them against the guest (they are the VMM's, so untrusted) and takes the record over;
 * info (may be NULL) says what it found. Errors: -ENOTSUP when the session did not negotiate
 * COIOMMU_CLIENT_FEATURE_RESUME; -EINVAL when the record or the memfds do not match this guest.
 * (symbol node COIOMMU_CLIENT_0.3) */
COIOMMU_CLIENT_API int coiommu_client_resume(struct coiommu_client* c, uint32_t vcpus, const uint16_t* bdfs,
                                             size_t count, int notifymap_fd, int topologymap_fd, int record_fd,
                                             struct coiommu_client_resume_info* info);

/* Orderly end: the daemon stops the engine (which unmaps everything), answers, and closes. info may
 * be NULL. Accepted during setup too. The handle is then unconnected: later calls are -ENOTCONN
 * until the next connect. */
COIOMMU_CLIENT_API int coiommu_client_close(struct coiommu_client* c, struct coiommu_client_close_info* info);

#ifdef __cplusplus
}
#endif

#endif /* COIOMMU_CLIENT_H */
