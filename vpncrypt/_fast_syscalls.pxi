# _fast_syscalls.pxi: The C declarations and system calls of the native loop:
# capabilities, the socket filter, heap trimming, sockets, batches of messages, UDP
# offload options, the atomic counter.
# Included by _fast.pyx, which stays the one extension module (routers pay per .so).

from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp
from libc.errno cimport errno, EAGAIN, EINTR, EIO, EINVAL, ENOMEM
from posix.unistd cimport read, write
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME

# The protocol clock's steady part (daemon/runtime.py steady): never stepped, and on
# Linux it counts suspended time too.
cdef extern from *:
    """
    #ifdef CLOCK_BOOTTIME
    #define VC_STEADY CLOCK_BOOTTIME
    #else
    #define VC_STEADY CLOCK_MONOTONIC
    #endif
    """
    int VC_STEADY

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MADV_DONTNEED

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT
from cpython.exc cimport PyErr_SetFromErrno


# Privilege drop (daemon/privileges.py): prctl(PR_SET_KEEPCAPS) and capset(2) here, and the
# socket filter (daemon/sockfilter.py), so the running daemon does not load ctypes for
# three system calls (~0.5 MB resident).
cdef extern from *:
    """
    #include <errno.h>
    #ifdef __linux__
    #include <sys/prctl.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <linux/capability.h>
    #include <linux/filter.h>
    #include <sys/socket.h>
    static int vc_keepcaps(int on) { return prctl(PR_SET_KEEPCAPS, on, 0, 0, 0); }
    static int vc_attach_filter(int fd, const void *code, size_t len) {
        struct sock_fprog prog;
        size_t insns = len / sizeof(struct sock_filter);
        if (len == 0 || len % sizeof(struct sock_filter) || insns > BPF_MAXINSNS) {
            errno = EINVAL;
            return -1;
        }
        prog.len = (unsigned short)insns;
        prog.filter = (struct sock_filter *)code;   /* the kernel copies it */
        return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
    }
    static int vc_capset(unsigned int mask) {
        struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct d[2];
        memset(d, 0, sizeof d);
        d[0].effective = d[0].permitted = mask;
        return (int)syscall(SYS_capset, &h, d);
    }
    #else
    static int vc_keepcaps(int on) { (void)on; errno = ENOSYS; return -1; }
    static int vc_capset(unsigned int mask) { (void)mask; errno = ENOSYS; return -1; }
    static int vc_attach_filter(int fd, const void *code, size_t len) {
        (void)fd; (void)code; (void)len; errno = ENOSYS; return -1;
    }
    #endif
    """
    int vc_keepcaps(int on)
    int vc_capset(unsigned int mask)
    int vc_attach_filter(int fd, const void *code, size_t len)


def keep_caps(bint on):
    """prctl(PR_SET_KEEPCAPS, on): keep the permitted capabilities across setuid."""
    if vc_keepcaps(on) != 0:
        PyErr_SetFromErrno(OSError)


def set_caps(unsigned int mask):
    """capset(2): exactly the capabilities in mask (below 32), effective and permitted."""
    if vc_capset(mask) != 0:
        PyErr_SetFromErrno(OSError)


def attach_filter(int fd, bytes code):
    """setsockopt(SO_ATTACH_FILTER) with a classic BPF program: code is its struct
    sock_filter array (8 bytes an instruction, native byte order)."""
    if vc_attach_filter(fd, <const char *>code, len(code)) != 0:
        PyErr_SetFromErrno(OSError)


cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    static int vc_trim(void) { return malloc_trim(0); }
    #else
    static int vc_trim(void) { return 0; }   /* musl (OpenWrt) gives free pages back itself */
    #endif
    """
    int vc_trim() nogil


def trim_heap():
    """malloc_trim(0): hand the C heap's free pages back to the kernel. glibc keeps what
    start-up allocated and freed (config parsing, key schedule, the helper's output) as
    resident memory otherwise. True if anything was released."""
    return bool(vc_trim())


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    size_t CMSG_LEN(size_t n)
    int recvmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags, void *timeout)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t n)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t sendmsg(int fd, const msghdr *m, int flags)
    int MSG_NOSIGNAL
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const void *addr,
                   socklen_t alen)
    int MSG_DONTWAIT
    int MSG_TRUNC
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from *:
    """
    #include <netinet/in.h>
    /* Linux UDP offloads (<linux/udp.h>); the numbers are only used where probed. */
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    """
    int SOL_UDP
    int UDP_SEGMENT
    int UDP_GRO

cdef extern from *:
    """
    static inline uint32_t vc_next_counter(uint32_t *c) {
        return __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
    }
    """
    uint32_t vc_next_counter(uint32_t *c) nogil
