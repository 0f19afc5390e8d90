/* Fast crop-decode-resize for the training/validation loaders (issue 7).
 *
 * Loaded with ctypes (see ffcv_utils/load/decode.py) and called from numba-compiled pipeline
 * code, one call per sample:
 *   - fj_decode_crop_resize: JPEG bytes -> decode only the crop (smallest DCT scale M/8 that keeps
 *     the crop >= the output, only the MCU columns/rows covering it, stop after its last row),
 *     then the antialiased resize below, flip fused in.
 *   - fj_crop_resize: the same resize for raw (uncompressed HWC RGB) samples.
 * Resize = separable area average (INTER_AREA's definition) on the DCT-scaled crop, whose
 * remaining reduction factor is mostly below 2, so it touches few pixels.
 * libjpeg's default error handler calls exit(); ours longjmps back and the sample becomes
 * "decoded as far as possible, rest grey" (or all grey), counted in a per-loader slot.
 *
 * Every sample is untrusted input (a beton can be hand-made, and passthrough stores JPEGs as they
 * came), so the entry points check it before touching memory: raw samples must hold the
 * height x width x 3 bytes their metadata claims, metadata sizes must be positive, crops are
 * clamped into the image (64-bit arithmetic), and a JPEG frame larger than its metadata or than
 * FJ_MAX_PIXELS is refused before libjpeg allocates for it. Refused samples are grey and counted
 * like damaged ones, and so is a resize that fails (out of memory): its output is grey, never the
 * previous sample's pixels left in the batch slot. Memory per thread is bounded: the scratch
 * region <= FJ_MAX_PIXELS x 3 bytes during a call (shrunk back under FJ_KEEP_BYTES after it),
 * libjpeg's pools <= FJ_LIBJPEG_BYTES.
 */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <math.h>
#include <jpeglib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define FJ_SLOTS 64
/* largest JPEG frame decoded: 8192 x 8192 (64 Mi pixels; far above any training image) */
#define FJ_MAX_PIXELS ((int64_t)1 << 26)
/* libjpeg's max_memory_to_use: a progressive frame keeps all its DCT coefficients, 6 bytes per
 * pixel at 4:4:4, so FJ_MAX_PIXELS needs 384 MiB; anything asking more is refused */
#define FJ_LIBJPEG_BYTES (512L << 20)
/* a progressive stream of many tiny scans costs a pass over the frame each: refuse past this */
#define FJ_MAX_SCANS 500
/* the per-thread scratch is freed after a call that grew it past this (an outlier) */
#define FJ_KEEP_BYTES ((uint64_t)16 << 20)
static volatile int64_t fj_failures[FJ_SLOTS];

int64_t fj_failure_count(int32_t slot) {
    if (slot < 0 || slot >= FJ_SLOTS) return -1;
    return __atomic_load_n(&fj_failures[slot], __ATOMIC_RELAXED);
}

int64_t fj_take_failures(int32_t slot) {
    if (slot < 0 || slot >= FJ_SLOTS) return -1;
    return __atomic_exchange_n(&fj_failures[slot], 0, __ATOMIC_RELAXED);
}

static void count_failure(int32_t slot) {
    if (slot >= 0 && slot < FJ_SLOTS) __atomic_add_fetch(&fj_failures[slot], 1, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- resize */

/* Per-axis resampling table: output index v reads n[v] source pixels from start[v] with weights
 * w[v*taps ...]: the exact area average over [x0 + v f, x0 + (v+1) f), f = in/out, as OpenCV's
 * INTER_AREA when both axes shrink. */
struct axis {
    int *start, *n;
    float *w;
    int taps;
};

static int axis_init(struct axis *ax, double x0, double len, int out, int limit, int enlarging) {
    double f = len / out;
    ax->taps = enlarging ? 2 : (int)ceil(f) + 1;
    ax->start = (int *)malloc(sizeof(int) * out);
    ax->n = (int *)malloc(sizeof(int) * out);
    ax->w = (float *)malloc(sizeof(float) * out * ax->taps);
    if (!ax->start || !ax->n || !ax->w) return -1;
    if (enlarging) {
        /* OpenCV's INTER_AREA when either axis grows: two taps per axis, weights from where the
         * output pixel's edges fall (the crop starts on a whole pixel here: no DCT scaling). */
        int base = (int)floor(x0), n = (int)floor(len + 0.5);
        if (n < 1) n = 1;
        if (base + n > limit) n = limit - base;
        for (int v = 0; v < out; v++) {
            float *w = ax->w + (int64_t)v * 2;
            int sx = (int)floor(v * f);
            double fx = (v + 1) - (sx + 1) / f;
            fx = fx <= 0 ? 0 : fx - floor(fx);
            if (sx >= n - 1) { sx = n - 1; fx = 0; }
            ax->start[v] = base + sx;
            w[0] = (float)(1 - fx);
            w[1] = (float)fx;
            ax->n[v] = fx > 0 ? 2 : 1;
        }
        return 0;
    }
    for (int v = 0; v < out; v++) {
        float *w = ax->w + (int64_t)v * ax->taps;
        double a = x0 + v * f, b = a + f;
        if (a < 0) a = 0;
        if (b > limit) b = limit;
        if (b <= a) { a = b - 1; if (a < 0) { a = 0; b = 1 < limit ? 1 : limit; } }
        int s = (int)floor(a), k = 0;
        double tot = 0;
        for (int x = s; x < b && k < ax->taps; x++, k++) {
            double lo = x > a ? x : a, hi = x + 1 < b ? x + 1 : b;
            w[k] = (float)(hi - lo);
            tot += hi - lo;
        }
        for (int q = 0; q < k; q++) w[q] = (float)(w[q] / tot);
        ax->start[v] = s;
        ax->n[v] = k;
    }
    return 0;
}

static void axis_free(struct axis *ax) { free(ax->start); free(ax->n); free(ax->w); }

/* Resample the float box (y0, x0, h, w) of an HWC RGB buffer (rows of `stride` bytes, `bh` x `bw`
 * valid pixels) into dst (oh x ow x 3, contiguous), mirrored left-right when flip != 0.
 * Separable, vertical pass first: per output row, the source rows it covers are summed with
 * their weights over the crop's columns (a contiguous loop the compiler vectorises), then that
 * one row is resampled horizontally. */
/* On x86-64 with GCC, an AVX2 copy of the resize is chosen at load time where the CPU has it
 * (the vertical pass's loops run 8 lanes wide); other compilers and CPUs get the SSE2/plain one. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FJ_CLONES __attribute__((target_clones("avx2,fma", "default")))
#else
#define FJ_CLONES
#endif

FJ_CLONES
static int resize_box(const uint8_t *src, int bh, int bw, int64_t stride,
                      double y0, double x0, double h, double w,
                      uint8_t *dst, int oh, int ow, int flip) {
    if (bh <= 0 || bw <= 0 || oh <= 0 || ow <= 0) return -1;
    if (h <= 0) h = 1;
    if (w <= 0) w = 1;
    struct axis ax = {0}, ay = {0};
    int enlarging = w < ow || h < oh;
    if (axis_init(&ax, x0, w, ow, bw, enlarging) || axis_init(&ay, y0, h, oh, bh, enlarging)) {
        axis_free(&ax); axis_free(&ay);
        return -2;
    }
    int cx0 = ax.start[0], cx1 = ax.start[ow - 1] + ax.n[ow - 1];
    int n = 3 * (cx1 - cx0), T = ax.taps;
    /* every output column reads T taps (zero weights past its own): fixed-length loops the
     * compiler unrolls; the padding after the crop's columns is zeroed, so 0 x pad = 0 */
    float *acc = (float *)calloc((size_t)(n + 3 * T + 3), sizeof(float));
    if (!acc) { axis_free(&ax); axis_free(&ay); return -2; }
    for (int v = 0; v < ow; v++) {
        float *wx = ax.w + (int64_t)v * T;
        for (int q = ax.n[v]; q < T; q++) wx[q] = 0.f;
        ax.start[v] = 3 * (ax.start[v] - cx0);
    }
    for (int u = 0; u < oh; u++) {
        const float *wy = ay.w + (int64_t)u * ay.taps;
        const uint8_t *r0 = src + (int64_t)ay.start[u] * stride + 3 * cx0;
        int k = ay.n[u];
        if (k == 1) {
            for (int q = 0; q < n; q++) acc[q] = r0[q];
        } else if (k == 2) {
            const uint8_t *r1 = r0 + stride;
            float w0 = wy[0], w1 = wy[1];
            for (int q = 0; q < n; q++) acc[q] = w0 * r0[q] + w1 * r1[q];
        } else {
            const uint8_t *r1 = r0 + stride, *r2 = r1 + stride;
            float w0 = wy[0], w1 = wy[1], w2 = wy[2];
            for (int q = 0; q < n; q++) acc[q] = w0 * r0[q] + w1 * r1[q] + w2 * r2[q];
            for (int j = 3; j < k; j++) {
                const uint8_t *r = r0 + (int64_t)j * stride;
                float wj = wy[j];
                for (int q = 0; q < n; q++) acc[q] += wj * r[q];
            }
        }
        uint8_t *drow = dst + (int64_t)u * ow * 3;
        int step = flip ? -3 : 3;
        uint8_t *d = drow + (flip ? 3 * (ow - 1) : 0);
#ifdef __SSE2__
        /* one pixel per 4-lane vector (R, G, B and the next pixel's R, ignored): T multiply-adds
         * per pixel instead of 3T; truncation after +0.5 rounds, the packs saturate to 0..255 */
#define FJ_HPASS(TAPS)                                                                  \
        for (int v = 0; v < ow; v++, d += step) {                                       \
            const float *wx = ax.w + (int64_t)v * (TAPS);                               \
            const float *p = acc + ax.start[v];                                         \
            __m128 s = _mm_set1_ps(0.5f);                                               \
            for (int q = 0; q < (TAPS); q++)                                            \
                s = _mm_add_ps(s, _mm_mul_ps(_mm_set1_ps(wx[q]), _mm_loadu_ps(p + 3 * q))); \
            __m128i i = _mm_cvttps_epi32(s);                                            \
            i = _mm_packs_epi32(i, i);                                                  \
            i = _mm_packus_epi16(i, i);                                                 \
            uint32_t px = (uint32_t)_mm_cvtsi128_si32(i);                               \
            d[0] = (uint8_t)px; d[1] = (uint8_t)(px >> 8); d[2] = (uint8_t)(px >> 16);  \
        }
#else
#define FJ_HPASS(TAPS)                                                                  \
        for (int v = 0; v < ow; v++, d += step) {                                       \
            const float *wx = ax.w + (int64_t)v * (TAPS);                               \
            const float *p = acc + ax.start[v];                                         \
            float s0 = 0.5f, s1 = 0.5f, s2 = 0.5f;                                      \
            for (int q = 0; q < (TAPS); q++) {                                          \
                s0 += wx[q] * p[3 * q]; s1 += wx[q] * p[3 * q + 1];                     \
                s2 += wx[q] * p[3 * q + 2];                                             \
            }                                                                           \
            d[0] = s0 <= 0.f ? 0 : s0 >= 255.f ? 255 : (uint8_t)s0;                     \
            d[1] = s1 <= 0.f ? 0 : s1 >= 255.f ? 255 : (uint8_t)s1;                     \
            d[2] = s2 <= 0.f ? 0 : s2 >= 255.f ? 255 : (uint8_t)s2;                     \
        }
#endif
        switch (T) {
            case 2: FJ_HPASS(2) break;
            case 3: FJ_HPASS(3) break;
            case 4: FJ_HPASS(4) break;
            default: FJ_HPASS(T) break;
        }
#undef FJ_HPASS
    }
    free(acc); axis_free(&ax); axis_free(&ay);
    return 0;
}

/* ---------------------------------------------------------------- untrusted input */

static void fill_grey(uint8_t *p, int64_t n) { memset(p, 128, (size_t)n); }

/* a sample refused or undecodable: grey output, counted */
static int refuse(uint8_t *dst, int32_t out_h, int32_t out_w, int32_t slot) {
    if (dst != NULL) fill_grey(dst, (int64_t)out_h * out_w * 3);
    count_failure(slot);
    return 2;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Clamp the box (y, x, h, w) into an h x w image (height, width >= 1): origin inside it, sides
 * >= 1 reaching no further than its edges. Boxes drawn by the crop generators are already inside
 * (unchanged); out-of-range ones (a centre crop of ratio > 1, hostile metadata, values near
 * 2^31) would read outside the buffer. 64-bit, so y + h cannot overflow. */
static void clamp_crop(int32_t height, int32_t width,
                       int32_t *y, int32_t *x, int32_t *h, int32_t *w) {
    int64_t y0 = clamp64(*y, 0, height - 1), x0 = clamp64(*x, 0, width - 1);
    *h = (int32_t)clamp64(*h, 1, height - y0);
    *w = (int32_t)clamp64(*w, 1, width - x0);
    *y = (int32_t)y0;
    *x = (int32_t)x0;
}

/* Resize the crop of a raw (HWC RGB) sample of `size` bytes. Returns 0, or 2 (grey, counted in
 * `slot`) when the metadata claims more pixels than the sample holds or a non-positive size;
 * -1 for a non-positive output size (a caller's error: dst untouched). */
int fj_crop_resize(const uint8_t *src, uint64_t size, int32_t height, int32_t width,
                   int32_t crop_y, int32_t crop_x, int32_t crop_h, int32_t crop_w,
                   uint8_t *dst, int32_t out_h, int32_t out_w, int32_t flip, int32_t slot) {
    if (out_h <= 0 || out_w <= 0 || dst == NULL) return -1;
    if (src == NULL || height <= 0 || width <= 0 || (uint64_t)height * (uint64_t)width * 3 > size)
        return refuse(dst, out_h, out_w, slot);
    clamp_crop(height, width, &crop_y, &crop_x, &crop_h, &crop_w);
    if (resize_box(src, height, width, (int64_t)width * 3, crop_y, crop_x, crop_h, crop_w,
                   dst, out_h, out_w, flip))
        return refuse(dst, out_h, out_w, slot);  /* out of memory */
    return 0;
}

/* ---------------------------------------------------------------- decode */

struct fj_error {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    int warnings;
};

static void fj_error_exit(j_common_ptr cinfo) {
    struct fj_error *err = (struct fj_error *)cinfo->err;
    longjmp(err->jump, 1);
}

static void fj_emit_message(j_common_ptr cinfo, int level) {
    /* level -1: a warning, i.e. corrupt data libjpeg worked around (e.g. premature end of file) */
    if (level < 0) ((struct fj_error *)cinfo->err)->warnings++;
}

static void fj_output_message(j_common_ptr cinfo) { (void)cinfo; }

/* called by libjpeg once per MCU row read (also while a progressive stream is buffered) */
static void fj_progress(j_common_ptr cinfo) {
    if (((j_decompress_ptr)cinfo)->input_scan_number > FJ_MAX_SCANS) fj_error_exit(cinfo);
}

/* per-thread scratch for decoded regions: grows to the largest region seen and lives as long as
 * the (long-lived) loader thread, unless that region was an outlier (see shrink_thread_buffer) */
static __thread uint8_t *tls_buf = NULL;
static __thread uint64_t tls_size = 0;

static uint8_t *thread_buffer(uint64_t need) {
    if (need > tls_size) {
        uint8_t *p = (uint8_t *)realloc(tls_buf, need);
        if (!p) return NULL;
        tls_buf = p;
        tls_size = need;
    }
    return tls_buf;
}

/* after each call: a scratch grown past FJ_KEEP_BYTES by one huge frame is freed, not kept */
static void shrink_thread_buffer(void) {
    if (tls_size > FJ_KEEP_BYTES) {
        free(tls_buf);
        tls_buf = NULL;
        tls_size = 0;
    }
}

/* bytes of scratch the calling thread keeps between calls (tests check the shrink) */
uint64_t fj_scratch_bytes(void) { return tls_size; }

/* After jpeg_read_header: refuse (longjmp, grey, counted) a frame larger than the metadata says
 * (a valid sample's metadata is its frame's size) or than FJ_MAX_PIXELS, before
 * jpeg_start_decompress allocates for it; a smaller frame gets the crop scaled into it. */
static void fit_crop_to_frame(j_decompress_ptr cinfo, int32_t *height, int32_t *width,
                              int32_t *crop_y, int32_t *crop_x, int32_t *crop_h, int32_t *crop_w) {
    int64_t fh = cinfo->image_height, fw = cinfo->image_width;
    if (fh > *height || fw > *width || fh * fw > FJ_MAX_PIXELS) fj_error_exit((j_common_ptr)cinfo);
    if (fh == *height && fw == *width) return;
    double fy = (double)fh / *height, fx = (double)fw / *width;
    *crop_y = (int32_t)(*crop_y * fy); *crop_h = (int32_t)ceil(*crop_h * fy);
    *crop_x = (int32_t)(*crop_x * fx); *crop_w = (int32_t)ceil(*crop_w * fx);
    *height = (int32_t)fh; *width = (int32_t)fw;
    clamp_crop(*height, *width, crop_y, crop_x, crop_h, crop_w);
}

/* Decode the crop (crop_y, crop_x, crop_h, crop_w; full-resolution pixels) of a JPEG and resize it
 * to out_h x out_w into dst (mirrored when flip; fast_dct: libjpeg's IFAST IDCT at full scale).
 * `tmp` (tmp_size bytes) holds the decoded region (height*width*3 bytes always suffice); NULL uses
 * a buffer kept per thread, which stays in cache from one image to the next. Returns 0 on
 * success, 1 when the JPEG was damaged (decoded as far as possible, rest grey), 2 when nothing
 * could be decoded, the sample was refused or its resize failed (all grey); both are counted in
 * `slot`. -1: a
 * non-positive output size (a caller's error). */
int fj_decode_crop_resize(const uint8_t *data, uint64_t size, int32_t height, int32_t width,
                          int32_t crop_y, int32_t crop_x, int32_t crop_h, int32_t crop_w,
                          uint8_t *tmp, uint64_t tmp_size,
                          uint8_t *dst, int32_t out_h, int32_t out_w, int32_t flip,
                          int32_t fast_dct, double headroom, int32_t slot) {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_progress_mgr progress;
    struct fj_error err;
    volatile int started = 0, rows_read = 0;
    volatile int buf_h = 0, buf_w = 0;
    uint8_t *volatile buf = tmp;
    volatile double sy0 = 0, sx0 = 0, sh = 0, sw = 0;
    volatile int region_x = 0;

    if (out_h <= 0 || out_w <= 0) return -1;
    if (height <= 0 || width <= 0) return refuse(dst, out_h, out_w, slot);
    clamp_crop(height, width, &crop_y, &crop_x, &crop_h, &crop_w);
    memset(&cinfo, 0, sizeof(cinfo));
    memset(&progress, 0, sizeof(progress));
    progress.progress_monitor = fj_progress;
    cinfo.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = fj_error_exit;
    err.mgr.emit_message = fj_emit_message;
    err.mgr.output_message = fj_output_message;
    err.warnings = 0;

    if (setjmp(err.jump)) {
        /* libjpeg gave up, or the frame was refused: keep what was decoded, grey for the rest */
        int status = 2;
        if (started && rows_read > 0) {
            int stride = buf_w * 3;
            fill_grey(buf + (int64_t)rows_read * stride, (int64_t)(buf_h - rows_read) * stride);
            status = 1;
            if (dst != NULL && resize_box(buf, buf_h, buf_w, stride, sy0, sx0 - region_x, sh, sw,
                                          dst, out_h, out_w, flip)) {
                fill_grey(dst, (int64_t)out_h * out_w * 3);  /* not the previous sample's pixels */
                status = 2;
            }
            count_failure(slot);
        } else {
            refuse(dst, out_h, out_w, slot);
        }
        jpeg_destroy_decompress(&cinfo);
        shrink_thread_buffer();
        return status;
    }

    jpeg_create_decompress(&cinfo);
    cinfo.mem->max_memory_to_use = FJ_LIBJPEG_BYTES;
    cinfo.progress = &progress;
    if (size == 0 || data == NULL) fj_error_exit((j_common_ptr)&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    fit_crop_to_frame(&cinfo, &height, &width, &crop_y, &crop_x, &crop_h, &crop_w);
    cinfo.out_color_space = JCS_RGB;
    if (fast_dct) cinfo.dct_method = JDCT_IFAST;
    /* smallest DCT scale M/8 keeping the crop at least `headroom` times as large as the output:
     * libjpeg's reduced IDCTs alias, and the area average after them hides it when it has a
     * factor of about 2 left to average over */
    if (headroom < 1.0) headroom = 1.0;
    int m = 1;
    while (m < 8 && (crop_h * m < headroom * out_h * 8 || crop_w * m < headroom * out_w * 8)) m++;
    cinfo.scale_num = m;
    cinfo.scale_denom = 8;
    jpeg_calc_output_dimensions(&cinfo);
    double fy = (double)cinfo.output_height / height, fx = (double)cinfo.output_width / width;
    sy0 = crop_y * fy; sh = crop_h * fy;
    sx0 = crop_x * fx; sw = crop_w * fx;

    int oy0 = (int)floor(sy0), oy1 = (int)ceil(sy0 + sh);
    int ox0 = (int)floor(sx0), ox1 = (int)ceil(sx0 + sw);
    if (oy0 < 0) oy0 = 0;
    if (ox0 < 0) ox0 = 0;
    if (oy1 > (int)cinfo.output_height) oy1 = cinfo.output_height;
    if (ox1 > (int)cinfo.output_width) ox1 = cinfo.output_width;
    if (oy0 >= oy1) oy0 = oy1 - 1;
    if (ox0 >= ox1) ox0 = ox1 - 1;
    sy0 = sy0 - oy0;  /* rows before oy0 are skipped: the buffer starts at oy0 */

    jpeg_start_decompress(&cinfo);
    JDIMENSION xoff = (JDIMENSION)ox0, cw = (JDIMENSION)(ox1 - ox0);
    if (cw < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoff, &cw);
    region_x = (int)xoff;
    buf_w = (int)cinfo.output_width;  /* after crop_scanline: the cropped width */
    buf_h = oy1 - oy0;
    uint64_t need = (uint64_t)buf_w * buf_h * 3;
    if (tmp == NULL) buf = thread_buffer(need);
    /* out of memory, or a caller's buffer too small (cannot happen for height*width*3) */
    if (buf == NULL || (tmp != NULL && need > tmp_size)) fj_error_exit((j_common_ptr)&cinfo);
    started = 1;
    if (oy0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)oy0);
    int stride = buf_w * 3;
    /* several rows per call: with 2x2 chroma subsampling libjpeg makes rows in pairs, and a
     * one-row request costs an extra copy through its spare row */
    JSAMPROW rows[16];
    while (rows_read < buf_h) {
        int want = buf_h - rows_read < 16 ? buf_h - rows_read : 16;
        for (int k = 0; k < want; k++) rows[k] = buf + (int64_t)(rows_read + k) * stride;
        JDIMENSION got = jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)want);
        if (got == 0) break;
        rows_read += got;
    }
    if (rows_read < buf_h) fill_grey(buf + (int64_t)rows_read * stride, (int64_t)(buf_h - rows_read) * stride);
    /* stop here: the rows below the crop are never decoded */
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    /* dst NULL: decode only (benchmarks/profile_loader.py times the two apart). A failed resize
     * (out of memory for its tables) left dst as the previous sample wrote it: grey, counted. */
    int resized_ok = dst == NULL
        || resize_box(buf, buf_h, buf_w, stride, sy0, sx0 - region_x, sh, sw, dst, out_h, out_w,
                      flip) == 0;
    shrink_thread_buffer();
    if (!resized_ok) return refuse(dst, out_h, out_w, slot);
    if (err.warnings || rows_read < buf_h) {
        count_failure(slot);
        return 1;
    }
    return 0;
}
