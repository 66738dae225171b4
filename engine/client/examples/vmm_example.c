/*
 * vmm_example.c: a VMM's side of one coiommud session, in plain C11 through libcoiommu-client.
 *
 *   coiommu-vmm-example SOCKET [VCPUS]        (VCPUS 1..64, default 2)
 *
 * It plays both halves a real VMM connects: the VMM (guest RAM as a sealed memfd, the device's
 * notify/topology maps, trigger eventfds, BAR0 traps forwarded to the daemon, balloon requests)
 * and, in place of a guest, the guest driver's part of the device ABI (a two-level DMA tracking
 * table in guest RAM, the BAR0 programming and ACTIVATE, one pin request per vCPU through its
 * notify slot). Every step prints one line; the last line is "coiommu-vmm-example: OK ..." and the
 * exit status 0, or the failing call with the library's error text and exit status 1.
 *
 * Build: cc -std=c11 -Wall -Wextra -Werror vmm_example.c $(pkg-config --cflags --libs coiommu-client)
 */
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS */

#include <coiommu/client.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PROG "coiommu-vmm-example"
#define PAGE_SIZE 4096u
#define MAX_VCPUS 64u

/* Guest physical layout: 64 MiB of RAM at GPA 0; the DTT's root and leaf page at 1 MiB; the pages
 * the vCPUs pin from 8 MiB (one per vCPU). Two DTT levels index gfn bits 0..18: all of this RAM. */
#define RAM_BYTES (64ull << 20)
#define DTT_LEVELS 2u
#define DTT_ROOT_GPA 0x100000ull
#define DTT_LEAF_GPA 0x101000ull
#define FIRST_DATA_GFN 0x800ull
#define ENDPOINT_BDF 0x0008u /* 00:01.0, the passthrough device */

/* The DMA tracking table's format (engine/core/spec.h). */
#define DTT_PRESENT 1ull
#define DTTE_PINNED (1u << 31)
#define DTTE_ACCESSED (1u << 30)
#define SINGLE_GFN_SHIFT 16

struct vmm {
    struct coiommu_client* client;
    int ram_fd;
    unsigned char* ram;
    int notifymap_fd;
    int topologymap_fd;
    _Atomic uint64_t* notify_slots; /* BAR2 as the guest maps it */
    const uint16_t* topology;       /* BAR4: u16 count, then the BDFs */
    int triggers[MAX_VCPUS];
    uint32_t vcpus;
};

static int fail(const struct vmm* v, const char* what, int rc) {
    fprintf(stderr, PROG ": %s: %s (%s)\n", what, strerror(-rc),
            v->client != NULL ? coiommu_client_last_error(v->client) : "");
    return 1;
}

static int fail_errno(const char* what) {
    fprintf(stderr, PROG ": %s: %s\n", what, strerror(errno));
    return 1;
}

/* The guest's view of its RAM (identity: the VMM maps all of it). */
static void* gpa_ptr(const struct vmm* v, uint64_t gpa) { return v->ram + gpa; }

static _Atomic uint32_t* dtt_leaf_entry(const struct vmm* v, uint64_t gfn) {
    return (_Atomic uint32_t*)gpa_ptr(v, DTT_LEAF_GPA) + (gfn & 0x3ff);
}

static int mmio_write_u64(struct vmm* v, uint64_t offset, uint64_t value) {
    return coiommu_client_mmio_write(v->client, offset, &value, sizeof value);
}

static int mmio_read_u64(struct vmm* v, uint64_t offset, uint64_t* value) {
    return coiommu_client_mmio_read(v->client, offset, value, sizeof *value);
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Guest RAM: a memfd the daemon maps too, sealed so that nobody can shrink it under a mapping. */
static int create_ram(struct vmm* v) {
    v->ram_fd = memfd_create("coiommu-vmm-example-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (v->ram_fd < 0) return fail_errno("memfd_create");
    if (ftruncate(v->ram_fd, (off_t)RAM_BYTES) != 0) return fail_errno("ftruncate guest RAM");
    if (fcntl(v->ram_fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) return fail_errno("seal guest RAM");
    void* p = mmap(NULL, RAM_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, v->ram_fd, 0);
    if (p == MAP_FAILED) return fail_errno("mmap guest RAM");
    v->ram = p;
    return 0;
}

static int map_device(struct vmm* v) {
    void* n = mmap(NULL, COIOMMU_CLIENT_BAR_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, v->notifymap_fd, 0);
    if (n == MAP_FAILED) return fail_errno("mmap notifymap");
    v->notify_slots = n;
    void* t = mmap(NULL, COIOMMU_CLIENT_BAR_SIZE, PROT_READ, MAP_SHARED, v->topologymap_fd, 0);
    if (t == MAP_FAILED) return fail_errno("mmap topologymap");
    v->topology = t;
    return 0;
}

/* The guest driver's probe: build the (empty) table, program BAR0, read it back, ACTIVATE. */
static int activate(struct vmm* v) {
    uint64_t* root = gpa_ptr(v, DTT_ROOT_GPA);
    memset(root, 0, PAGE_SIZE);
    memset(gpa_ptr(v, DTT_LEAF_GPA), 0, PAGE_SIZE);
    /* Level 2 indexes gfn bits 10..18: every data page here is below gfn 0x400 * 512. */
    /* A release store: the daemon reads table entries with atomic loads, and must see the zeroed
     * leaf before the root entry that points at it (as a guest driver publishes its table). */
    atomic_store_explicit((_Atomic uint64_t*)&root[(FIRST_DATA_GFN >> 10) & 0x1ff], DTT_LEAF_GPA | DTT_PRESENT,
                          memory_order_release);

    int rc = mmio_write_u64(v, COIOMMU_CLIENT_REG_DTT_ROOT, DTT_ROOT_GPA);
    if (rc < 0) return fail(v, "BAR0 write dtt_root", rc);
    rc = mmio_write_u64(v, COIOMMU_CLIENT_REG_DTT_LEVEL, DTT_LEVELS);
    if (rc < 0) return fail(v, "BAR0 write dtt_level", rc);
    uint64_t root_back = 0, level_back = 0;
    rc = mmio_read_u64(v, COIOMMU_CLIENT_REG_DTT_ROOT, &root_back);
    if (rc < 0) return fail(v, "BAR0 read dtt_root", rc);
    rc = mmio_read_u64(v, COIOMMU_CLIENT_REG_DTT_LEVEL, &level_back);
    if (rc < 0) return fail(v, "BAR0 read dtt_level", rc);
    if (root_back != DTT_ROOT_GPA || level_back != DTT_LEVELS) {
        fprintf(stderr, PROG ": BAR0 reads back dtt_root %#" PRIx64 " dtt_level %" PRIu64 "\n", root_back, level_back);
        return 1;
    }
    rc = mmio_write_u64(v, COIOMMU_CLIENT_REG_CMD, COIOMMU_CLIENT_CMD_ACTIVATE);
    if (rc < 0) return fail(v, "BAR0 write cmd ACTIVATE", rc);
    printf(PROG ": BAR0 dtt_root=%#" PRIx64 " dtt_level=%" PRIu64 ", ACTIVATE written\n", root_back, level_back);
    return 0;
}

/* One DMA map of one page by the guest driver on `vcpu`: mark the leaf entry (map count + 1,
 * ACCESSED), and when it is not PINNED, ask through the vCPU's notify slot and trigger, then wait
 * for the slot to read 0. vCPU 0 rings its trigger as KVM would (the ioeventfd); the others as a
 * trapped BAR0 byte the VMM forwards. */
static int guest_map_page(struct vmm* v, uint32_t vcpu, uint64_t gfn) {
    _Atomic uint32_t* e = dtt_leaf_entry(v, gfn);
    uint32_t old = atomic_load_explicit(e, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(e, &old, (old + 1) | DTTE_ACCESSED, memory_order_acq_rel,
                                                  memory_order_relaxed)) {}
    if ((old & DTTE_PINNED) != 0) return 0;
    atomic_store_explicit(&v->notify_slots[vcpu], (gfn << SINGLE_GFN_SHIFT) | ENDPOINT_BDF, memory_order_release);
    if (vcpu == 0) {
        const uint64_t one = 1;
        if (write(v->triggers[0], &one, sizeof one) != (ssize_t)sizeof one) return fail_errno("write trigger");
    } else {
        const uint8_t byte = 1;
        const int rc = coiommu_client_mmio_write(v->client, COIOMMU_CLIENT_REG_TRIGGER_BASE + vcpu, &byte, 1);
        if (rc < 0) return fail(v, "BAR0 trigger byte", rc);
    }
    for (int i = 0; i < 50000 && atomic_load_explicit(&v->notify_slots[vcpu], memory_order_acquire) != 0; ++i) {
        sleep_us(100); /* the driver spins up to 5 s */
    }
    if (atomic_load_explicit(&v->notify_slots[vcpu], memory_order_acquire) != 0) {
        fprintf(stderr, PROG ": vCPU %u: the pin request for gfn %#" PRIx64 " was not served\n", vcpu, gfn);
        return 1;
    }
    if ((atomic_load_explicit(e, memory_order_acquire) & DTTE_PINNED) == 0) {
        fprintf(stderr, PROG ": vCPU %u: gfn %#" PRIx64 " is not PINNED after its request\n", vcpu, gfn);
        return 1;
    }
    return 0;
}

/* The guest's DMA unmap: map count - 1, nothing sent (lazy unpinning). */
static void guest_unmap_page(struct vmm* v, uint64_t gfn) {
    atomic_fetch_sub_explicit(dtt_leaf_entry(v, gfn), 1, memory_order_release);
}

static int print_stats(struct vmm* v, const char* when, struct coiommu_client_stats* s) {
    const int rc = coiommu_client_get_stats(v->client, s, sizeof *s);
    if (rc < 0) return fail(v, "get_stats", rc);
    printf(PROG ": stats (%s): active=%u requests=%" PRIu64 " pages_pinned=%" PRIu64 " pinned_pages=%" PRIu64
                " dma_entries=%" PRIu64 "/%" PRIu64 " pages_unpinned=%" PRIu64 " balloon_success=%" PRIu64
                " requests_failed=%" PRIu64 "\n",
           when, s->active, s->requests, s->pages_pinned, s->pinned_pages, s->dma_entries, s->dma_entry_limit,
           s->pages_unpinned, s->balloon_success, s->requests_failed);
    return 0;
}

static int run(struct vmm* v, const char* socket_path) {
    int rc = coiommu_client_new(&v->client);
    if (rc < 0) return fail(v, "coiommu_client_new", rc);

    /* Hello. */
    struct coiommu_client_hello hello;
    rc = coiommu_client_connect(v->client, socket_path, PROG, COIOMMU_CLIENT_FEATURES_ALL, &hello);
    if (rc < 0) return fail(v, "connect", rc);
    const uint32_t lib = coiommu_client_version();
    printf(PROG ": library %u.%u.%u, protocol %u, session %u, features %#" PRIx64 "\n", (lib >> 16) & 0xff,
           (lib >> 8) & 0xff, lib & 0xff, hello.version, hello.session_id, hello.features);

    /* SetMemory. */
    if (create_ram(v) != 0) return 1;
    const struct coiommu_client_region region = {.fd = v->ram_fd, .gpa = 0, .size = RAM_BYTES};
    rc = coiommu_client_set_memory(v->client, &region, 1);
    if (rc < 0) return fail(v, "set_memory", rc);
    printf(PROG ": guest RAM %llu MiB registered\n", RAM_BYTES >> 20);

    /* SetTopology: the notify map (BAR2) and topology map (BAR4) come back as memfds. */
    const uint16_t bdfs[] = {ENDPOINT_BDF};
    rc = coiommu_client_set_topology(v->client, v->vcpus, bdfs, 1, &v->notifymap_fd, &v->topologymap_fd);
    if (rc < 0) return fail(v, "set_topology", rc);
    if (map_device(v) != 0) return 1;
    if (v->topology[0] != 1 || v->topology[1] != ENDPOINT_BDF) {
        fprintf(stderr, PROG ": the topology map lists %u endpoints, first %#x\n", v->topology[0], v->topology[1]);
        return 1;
    }
    printf(PROG ": topology: %u vCPUs, endpoint %02x:%02x.%x\n", v->vcpus, ENDPOINT_BDF >> 8,
           (ENDPOINT_BDF >> 3) & 0x1f, ENDPOINT_BDF & 7);

    /* SetBackend: the fake one (no device needed); a VMM with passthrough sends its VFIO container. */
    struct coiommu_client_backend_info backend;
    rc = coiommu_client_set_backend_fake(v->client, COIOMMU_CLIENT_FAKE_LATENCY_NONE, 0, &backend);
    if (rc < 0) return fail(v, "set_backend_fake", rc);
    printf(PROG ": backend %s, entry limit %" PRIu64 "\n", backend.name, backend.entry_limit);

    /* SetTriggers: one eventfd per vCPU, which a VMM also registers as KVM ioeventfds at BAR0 + 0x18 + i. */
    for (uint32_t i = 0; i < v->vcpus; ++i) {
        v->triggers[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (v->triggers[i] < 0) return fail_errno("eventfd");
    }
    bool running = false;
    rc = coiommu_client_set_triggers(v->client, v->triggers, v->vcpus, &running);
    if (rc < 0) return fail(v, "set_triggers", rc);
    if (!running) {
        fprintf(stderr, PROG ": every vCPU has its trigger, but the daemon does not say running\n");
        return 1;
    }
    printf(PROG ": triggers set, running\n");

    /* The guest driver's probe. */
    if (activate(v) != 0) return 1;
    struct coiommu_client_stats s;
    if (print_stats(v, "activated", &s) != 0) return 1;
    if (s.active != 1) {
        fprintf(stderr, PROG ": the device did not accept ACTIVATE (activate_refused=%" PRIu64 ")\n",
                s.activate_refused);
        return 1;
    }

    /* DMA: each vCPU maps one page, the daemon pins it. */
    for (uint32_t i = 0; i < v->vcpus; ++i) {
        if (guest_map_page(v, i, FIRST_DATA_GFN + i) != 0) return 1;
        bool mapped = false;
        rc = coiommu_client_query_mapped(v->client, (FIRST_DATA_GFN + i) * PAGE_SIZE, PAGE_SIZE, &mapped);
        if (rc < 0) return fail(v, "query_mapped", rc);
        if (!mapped) {
            fprintf(stderr, PROG ": gfn %#llx is PINNED but not mapped in the backend\n", FIRST_DATA_GFN + i);
            return 1;
        }
    }
    printf(PROG ": %u pages pinned through the notify slots\n", v->vcpus);
    if (print_stats(v, "pinned", &s) != 0) return 1;
    if (s.pages_pinned != v->vcpus || s.pinned_pages != v->vcpus || s.requests_failed != 0) {
        fprintf(stderr, PROG ": the daemon counts %" PRIu64 " pages pinned, %" PRIu64 " failed requests\n",
                s.pages_pinned, s.requests_failed);
        return 1;
    }

    /* Balloon: the guest is done with the pages; inflating over them unpins them. */
    for (uint32_t i = 0; i < v->vcpus; ++i) guest_unmap_page(v, FIRST_DATA_GFN + i);
    const struct coiommu_client_gfn_range range = {.start_gfn = FIRST_DATA_GFN, .count = v->vcpus};
    enum coiommu_client_balloon_result balloon = COIOMMU_CLIENT_BALLOON_FAILED;
    rc = coiommu_client_balloon_unpin(v->client, &range, 1, &balloon);
    if (rc < 0) return fail(v, "balloon_unpin", rc);
    printf(PROG ": balloon over gfn %#llx +%u: %s\n", FIRST_DATA_GFN, v->vcpus,
           balloon == COIOMMU_CLIENT_BALLOON_SUCCESS ? "success" : "failed");
    if (balloon != COIOMMU_CLIENT_BALLOON_SUCCESS) return 1;
    if (print_stats(v, "ballooned", &s) != 0) return 1;
    if (s.pinned_pages != 0 || s.balloon_success != 1) {
        fprintf(stderr, PROG ": after the balloon %" PRIu64 " pages are still pinned\n", s.pinned_pages);
        return 1;
    }

    /* Close: the daemon stops the engine, which unmaps everything. */
    struct coiommu_client_close_info closed;
    rc = coiommu_client_close(v->client, &closed);
    if (rc < 0) return fail(v, "close", rc);
    printf(PROG ": OK: session %u closed, dma_entries_after=%" PRIu64 " pages_unpinned=%" PRIu64 "\n", hello.session_id,
           closed.dma_entries_after, closed.pages_unpinned);
    return closed.dma_entries_after == 0 ? 0 : 1;
}

static void teardown(struct vmm* v) {
    coiommu_client_free(v->client); /* no-op after close; without one the daemon tears the session down */
    for (uint32_t i = 0; i < v->vcpus; ++i) {
        if (v->triggers[i] >= 0) close(v->triggers[i]);
    }
    if (v->notify_slots != NULL) munmap((void*)v->notify_slots, COIOMMU_CLIENT_BAR_SIZE);
    if (v->topology != NULL) munmap((void*)v->topology, COIOMMU_CLIENT_BAR_SIZE);
    if (v->notifymap_fd >= 0) close(v->notifymap_fd);
    if (v->topologymap_fd >= 0) close(v->topologymap_fd);
    if (v->ram != NULL) munmap(v->ram, RAM_BYTES);
    if (v->ram_fd >= 0) close(v->ram_fd);
}

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: " PROG " SOCKET [VCPUS]   (VCPUS 1..%u, default 2)\n", MAX_VCPUS);
        return 2;
    }
    struct vmm v = {.ram_fd = -1, .notifymap_fd = -1, .topologymap_fd = -1, .vcpus = 2};
    for (uint32_t i = 0; i < MAX_VCPUS; ++i) v.triggers[i] = -1;
    if (argc == 3) {
        char* end = NULL;
        const unsigned long n = strtoul(argv[2], &end, 10);
        if (*end != '\0' || n == 0 || n > MAX_VCPUS) {
            fprintf(stderr, PROG ": VCPUS must be 1..%u\n", MAX_VCPUS);
            return 2;
        }
        v.vcpus = (uint32_t)n;
    }
    const int status = run(&v, argv[1]);
    teardown(&v);
    return status;
}
