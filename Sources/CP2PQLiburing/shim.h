#ifndef CP2PQ_LIBURING_SHIM_H
#define CP2PQ_LIBURING_SHIM_H
// A glibc header first: liburing.h redefines _XOPEN_SOURCE, and without a prior system include
// the module build fails on fd_set.
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <poll.h>
#include <errno.h>
#include <string.h>
#include <liburing.h>

/// liburing 2.3 has no io_uring_setup_buf_ring: map the ring memory, initialise it and register
/// it with the kernel as buffer group `bgid`. Returns the ring, or NULL with *err set to a
/// negative errno.
static inline struct io_uring_buf_ring *p2pq_setup_buf_ring(struct io_uring *ring, unsigned entries,
                                                            unsigned short bgid, int *err) {
    size_t size = entries * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) {
        *err = -errno;
        return NULL;
    }
    struct io_uring_buf_ring *br = (struct io_uring_buf_ring *)mem;
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (unsigned long)(uintptr_t)mem;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    int rc = io_uring_register_buf_ring(ring, &reg, 0);
    if (rc != 0) {
        munmap(mem, size);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return br;
}

static inline void p2pq_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br, unsigned entries,
                                      unsigned short bgid) {
    io_uring_unregister_buf_ring(ring, bgid);
    munmap(br, entries * sizeof(struct io_uring_buf));
}

/// Multishot receive into buffer group `bgid`.
static inline void p2pq_prep_recv_multishot(struct io_uring_sqe *sqe, int fd, unsigned short bgid) {
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = bgid;
}

static const unsigned P2PQ_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const unsigned P2PQ_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const unsigned P2PQ_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
static const unsigned P2PQ_SETUP_CQSIZE = IORING_SETUP_CQSIZE;
static const unsigned P2PQ_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const unsigned P2PQ_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
static const unsigned P2PQ_CQE_F_MORE = IORING_CQE_F_MORE;
static const unsigned P2PQ_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;
static const unsigned P2PQ_ASYNC_CANCEL_ALL = IORING_ASYNC_CANCEL_ALL;
static const unsigned P2PQ_POLLIN = POLLIN;
static const unsigned P2PQ_POLLOUT = POLLOUT;
static const unsigned P2PQ_POLLERR = POLLERR;
#endif
