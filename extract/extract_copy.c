/* extract_copy.c - see extract_copy.h */
#include "extract_copy.h"
#include "base/fs.h"
#include "base/util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Refusals that will not change for another file of the same job. */
static int refusal_is_final(int e)
{
    return e == EXDEV || e == EOPNOTSUPP || e == ENOTTY || e == ENOSYS ||
           e == EINVAL || e == EPERM || e == EBADF || e == ETXTBSY;
}

static int clone_range(int src_fd, uint64_t src_off, int dst_fd, uint64_t dst_off,
                       uint64_t len)
{
    struct file_clone_range r = {.src_fd = src_fd, .src_offset = src_off,
                                 .src_length = len, .dest_offset = dst_off};
    int rc;
    do
        rc = ioctl(dst_fd, FICLONERANGE, &r);
    while (rc != 0 && errno == EINTR);
    return rc;
}

uint64_t ec_probe(int src_fd, const char *probe_path)
{
    int fd = fs_open_out(probe_path, O_RDWR | O_CREAT | O_TRUNC, "cannot create", NULL);
    if (fd < 0)
        return 0;
    struct statvfs sv;
    uint64_t bs = fstatvfs(fd, &sv) == 0 ? (uint64_t)sv.f_bsize : 0;
    /* clone granularity is the filesystem block; distrust odd answers */
    if (bs < 512 || bs > (1u << 20) || (bs & (bs - 1)))
        bs = 4096;
    off_t src_size = lseek(src_fd, 0, SEEK_END);
    int ok = src_size >= (off_t)bs && clone_range(src_fd, 0, fd, 0, bs) == 0;
    close(fd);
    unlink(probe_path);
    return ok ? bs : 0;
}

uint64_t ec_phase(const uint64_t *src_off, const uint64_t *len, const int *ok,
                  int n, uint64_t bs, int *use)
{
    /* Each stretch votes, with its whole blocks, for the phase that lines
     * it up; a file has few, so a quadratic scan is fine. */
    uint64_t best = 0, best_gain = 0, at = 0;
    for (int i = 0; i < n; at += len[i], i++) {
        uint64_t ph = (src_off[i] - at % bs + bs) % bs;
        if (!ok[i] || len[i] < bs || ph % 8)
            continue;
        uint64_t gain = 0, pos = 0;
        for (int k = 0; k < n; pos += len[k], k++)
            if (ok[k] && (src_off[k] - pos % bs + bs) % bs == ph) {
                uint64_t head = (bs - src_off[k] % bs) % bs;
                if (len[k] > head)
                    gain += (len[k] - head) / bs * bs;
            }
        if (gain > best_gain) {
            best_gain = gain;
            best = ph;
        }
    }
    *use = best_gain > 0;
    return best;
}

int ec_put(fs_out *o, int src_fd, uint64_t src_off, const uint8_t *buf, size_t len,
           uint64_t bs, gint *enabled, uint64_t *shared, GError **err)
{
    if (!bs || !g_atomic_int_get(enabled) || o->written % bs != src_off % bs)
        return fs_out_write(o, buf, len, err);
    size_t head = (size_t)MIN((uint64_t)len, (bs - src_off % bs) % bs);
    size_t mid = (size_t)((len - head) / bs * bs);
    if (mid == 0)
        return fs_out_write(o, buf, len, err);
    if (head && fs_out_write(o, buf, head, err))
        return -1;
    if (clone_range(src_fd, src_off + head, o->fd, o->written, mid) == 0 &&
        lseek(o->fd, (off_t)(o->written + mid), SEEK_SET) >= 0) {
        o->written += mid;
        *shared += mid;
    } else {
        if (refusal_is_final(errno))
            g_atomic_int_set(enabled, 0);
        /* The clone may have extended the file before failing; writing
         * from here on replaces whatever it left. */
        if (lseek(o->fd, (off_t)o->written, SEEK_SET) < 0)
            return qm_set_errno(err, errno, "cannot seek in", o->path);
        if (fs_out_write(o, buf + head, mid, err))
            return -1;
    }
    return fs_out_write(o, buf + head + mid, len - head - mid, err);
}
