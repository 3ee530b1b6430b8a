#define _GNU_SOURCE
#include "CP2PQSystem.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int p2pq_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int p2pq_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

#define P2PQ_EPOLL_BATCH 256

int p2pq_epoll_wait(int epfd, p2pq_epoll_event *out, int max, int64_t timeout_ns) {
    struct epoll_event evs[P2PQ_EPOLL_BATCH];
    if (max > P2PQ_EPOLL_BATCH) max = P2PQ_EPOLL_BATCH;
    int n;
#ifdef SYS_epoll_pwait2
    static int no_pwait2 = 0;
    if (!no_pwait2) {
        struct timespec ts, *tsp = NULL;
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000LL;
            ts.tv_nsec = timeout_ns % 1000000000LL;
            tsp = &ts;
        }
        n = (int)syscall(SYS_epoll_pwait2, epfd, evs, max, tsp, NULL, 0);
        if (n < 0 && errno == ENOSYS) {
            no_pwait2 = 1;
        } else {
            goto done;
        }
    }
#endif
    {
        int ms = -1;
        if (timeout_ns >= 0) {
            int64_t v = (timeout_ns + 999999LL) / 1000000LL;
            ms = v > 0x7fffffff ? 0x7fffffff : (int)v;
        }
        n = epoll_wait(epfd, evs, max, ms);
    }
#ifdef SYS_epoll_pwait2
done:
#endif
    for (int i = 0; i < n; i++) {
        out[i].events = evs[i].events;
        out[i].data = evs[i].data.u64;
    }
    return n;
}

int p2pq_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int p2pq_eventfd_signal(int fd) {
    uint64_t one = 1;
    ssize_t r;
    do { r = write(fd, &one, sizeof one); } while (r < 0 && errno == EINTR);
    // EAGAIN means the counter is saturated: the reader is already certain to wake.
    return (r < 0 && errno != EAGAIN) ? -1 : 0;
}

int p2pq_eventfd_drain(int fd) {
    uint64_t v;
    ssize_t r;
    do { r = read(fd, &v, sizeof v); } while (r < 0 && errno == EINTR);
    return (r < 0 && errno != EAGAIN) ? -1 : 0;
}

int p2pq_socket(int family, int type, int protocol) {
    return socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
}

int p2pq_accept(int fd, struct sockaddr *addr, socklen_t *len) {
    return accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int p2pq_setsockopt_int(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value);
}

int p2pq_getsockopt_int(int fd, int level, int name, int *value) {
    socklen_t len = sizeof *value;
    return getsockopt(fd, level, name, value, &len);
}

_Static_assert(sizeof(p2pq_mmsghdr) == sizeof(struct mmsghdr), "mmsghdr layout");

int p2pq_recvmmsg(int fd, p2pq_mmsghdr *msgs, unsigned int n) {
    return recvmmsg(fd, (struct mmsghdr *)msgs, n, MSG_DONTWAIT, NULL);
}

int p2pq_sendmmsg(int fd, p2pq_mmsghdr *msgs, unsigned int n) {
    return sendmmsg(fd, (struct mmsghdr *)msgs, n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int p2pq_join_multicast_v4(int fd, struct in_addr group, struct in_addr interface_addr, int ifindex, int join) {
    struct ip_mreqn m;
    memset(&m, 0, sizeof m);
    m.imr_multiaddr = group;
    m.imr_address = interface_addr;
    m.imr_ifindex = ifindex;
    return setsockopt(fd, IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &m, sizeof m);
}

int p2pq_join_multicast_v6(int fd, const struct in6_addr *group, int ifindex, int join) {
    struct ipv6_mreq m;
    memset(&m, 0, sizeof m);
    m.ipv6mr_multiaddr = *group;
    m.ipv6mr_interface = (unsigned)ifindex;
    return setsockopt(fd, IPPROTO_IPV6, join ? IPV6_ADD_MEMBERSHIP : IPV6_DROP_MEMBERSHIP, &m, sizeof m);
}

int p2pq_gettid(void) { return (int)syscall(SYS_gettid); }

int p2pq_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[15] = 0;
    return pthread_setname_np(pthread_self(), buf);
}

// CPUID leaf 1 (ECX) on x86-64, the kernel's hardware capabilities on ARMv8: the same sources
// OpenSSL consults to pick its AES-GCM code, and neither needs a file or a parser.
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
int p2pq_cpu_has_aes_gcm(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    return (ecx & bit_AES) && (ecx & bit_PCLMUL);
}
#elif defined(__aarch64__)
#include <sys/auxv.h>
#include <asm/hwcap.h>
int p2pq_cpu_has_aes_gcm(void) {
    unsigned long caps = getauxval(AT_HWCAP);
    return (caps & HWCAP_AES) && (caps & HWCAP_PMULL);
}
#else
int p2pq_cpu_has_aes_gcm(void) { return 0; }
#endif
