#ifndef CP2PQ_SYSTEM_H
#define CP2PQ_SYSTEM_H
// Declarations Glibc does not import into Swift (epoll, eventfd, timerfd, mmsghdr) plus a few
// small wrappers for macros and packed structs that Swift cannot use directly.
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

/// epoll_event is packed on x86_64, which Swift imports awkwardly; this is the same data
/// laid out naturally. `p2pq_epoll_wait` converts.
typedef struct {
    uint32_t events;
    uint64_t data;
} p2pq_epoll_event;

static const uint32_t P2PQ_EPOLLIN = EPOLLIN;
static const uint32_t P2PQ_EPOLLOUT = EPOLLOUT;
static const uint32_t P2PQ_EPOLLERR = EPOLLERR;
static const uint32_t P2PQ_EPOLLHUP = EPOLLHUP;
static const uint32_t P2PQ_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t P2PQ_EPOLLET = EPOLLET;

int p2pq_epoll_create(void);
int p2pq_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/// Waits with nanosecond precision (epoll_pwait2 when the kernel has it, else epoll_wait with
/// the timeout rounded up to whole milliseconds). timeout_ns < 0 waits forever.
int p2pq_epoll_wait(int epfd, p2pq_epoll_event *out, int max, int64_t timeout_ns);

int p2pq_eventfd(void);
int p2pq_eventfd_signal(int fd);
int p2pq_eventfd_drain(int fd);

/// A nonblocking, close-on-exec socket.
int p2pq_socket(int family, int type, int protocol);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int p2pq_accept(int fd, struct sockaddr *addr, socklen_t *len);
int p2pq_setsockopt_int(int fd, int level, int name, int value);
int p2pq_getsockopt_int(int fd, int level, int name, int *value);

/// The layout of struct mmsghdr, which glibc declares only under _GNU_SOURCE.
typedef struct {
    struct msghdr msg_hdr;
    unsigned int msg_len;
} p2pq_mmsghdr;

/// recvmmsg/sendmmsg over caller-provided arrays: one datagram per entry, nonblocking.
int p2pq_recvmmsg(int fd, p2pq_mmsghdr *msgs, unsigned int n);
int p2pq_sendmmsg(int fd, p2pq_mmsghdr *msgs, unsigned int n);
static const int P2PQ_MSG_TRUNC = MSG_TRUNC;

int p2pq_join_multicast_v4(int fd, struct in_addr group, struct in_addr interface_addr, int ifindex, int join);
int p2pq_join_multicast_v6(int fd, const struct in6_addr *group, int ifindex, int join);

static const int P2PQ_SOCK_STREAM = SOCK_STREAM;
static const int P2PQ_SOCK_DGRAM = SOCK_DGRAM;
static const int P2PQ_MSG_NOSIGNAL = MSG_NOSIGNAL;
static const int P2PQ_MSG_DONTWAIT = MSG_DONTWAIT;
static const int P2PQ_SHUT_WR = SHUT_WR;
static const int P2PQ_SHUT_RD = SHUT_RD;
static const int P2PQ_SHUT_RDWR = SHUT_RDWR;

/// The thread id of the caller (gettid), for reactor-thread assertions and names.
int p2pq_gettid(void);
int p2pq_set_thread_name(const char *name);

/// 1 when the CPU has AES and carry-less multiply instructions (x86-64 AES-NI and PCLMULQDQ,
/// ARMv8 AES and PMULL), which make AES-256-GCM faster than ChaCha20-Poly1305; else 0.
int p2pq_cpu_has_aes_gcm(void);

#endif
