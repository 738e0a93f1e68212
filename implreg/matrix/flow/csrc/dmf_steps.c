/* implreg: integration steps of gradient flow on a small deep matrix factorization, many per call.
 *
 * The same arithmetic as the fused step kernel of implreg/matrix/flow/kernels.py (dmf_step_kernel: the
 * column form col_attempt + col_dmf + col_guard, inv_root with frexp, rk_post), operation for operation and
 * in the same order, so every row gets the same bits as the eager and compiled torch kernels.  That holds
 * because every operation here is an exactly rounded IEEE double operation (+ - * / and comparisons, frexp,
 * fabs), compiled with -ffp-contract=off (no fused multiply-add) and without -ffast-math (no reassociation).
 *
 * The loop takes lock-step integration steps for a batch of rows and returns to Python as soon as one row
 * needs the host (a stopping event, a level or save crossing, a finished row: the kernel's "attention"), so
 * the Python loop sees exactly the steps it would have seen one call at a time, minus the quiet ones.
 *
 * Layout: every per-row array is batch-first and contiguous (row i of y is y[i*P .. i*P+P-1]).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>

#define MAXN 16   /* factors */
#define MAXS 16   /* RK stages */

typedef struct {
    int64_t N, kind, m, P, L, T, has_event, has_guard, S, NC, max_steps;
    int64_t a[MAXN], b[MAXN], off[MAXN];
    int64_t d, e, p0_row, p1_row;
    const double *A;    /* S×S stage weights, row-major, zero padded */
    const double *E;    /* S error weights */
    const double *poly; /* NC monomial coefficients of f^(-1/m) in u = 4(f - 3/4) */
    double rtol, atol, target, limit, tiny_step;
    double *work;       /* scratch */
    int64_t wsize;
} Spec;

static inline double nmax(double x, double y) { return (x != x || y != y) ? NAN : (x > y ? x : y); }
static inline double nmin(double x, double y) { return (x != x || y != y) ? NAN : (x < y ? x : y); }

/* col_fsum: s_i = x_i + x_{half+i}, an odd last one carried; destroys x */
static double fsum(double *x, int64_t m) {
    while (m > 1) {
        int64_t half = m / 2;
        for (int64_t i = 0; i < half; i++) x[i] = x[i] + x[half + i];
        if (m % 2) { x[half] = x[2 * half]; m = half + 1; } else m = half;
    }
    return x[0];
}

/* C (ra×cb) = A (ra×k) · B (k×cb), each entry ((A_i0 B_0j + A_i1 B_1j) + …); tA/tB: read A or B transposed
   (A stored k×ra, B stored cb×k) */
static void mm(const double *A, const double *B, double *C, int64_t ra, int64_t k, int64_t cb, int tA, int tB) {
    for (int64_t i = 0; i < ra; i++)
        for (int64_t j = 0; j < cb; j++) {
            double acc = (tA ? A[0 * ra + i] : A[i * k + 0]) * (tB ? B[j * k + 0] : B[0 * cb + j]);
            for (int64_t q = 1; q < k; q++)
                acc = acc + (tA ? A[q * ra + i] : A[i * k + q]) * (tB ? B[j * k + q] : B[q * cb + j]);
            C[i * cb + j] = acc;
        }
}

/* col_det: cofactor expansion along the first row (k ≤ 4), W row-major k×k with row stride rs */
static double det(const double *W, int64_t k, int64_t rs) {
    if (k == 1) return W[0];
    if (k == 2) return W[0] * W[rs + 1] - W[1] * W[rs];
    double minor[16];
    double out = 0.0;
    for (int64_t j = 0; j < k; j++) {
        int64_t c = 0;
        for (int64_t r = 1; r < k; r++)
            for (int64_t q = 0; q < k; q++)
                if (q != j) minor[c++] = W[r * rs + q];
        double term = W[j] * det(minor, k - 1, k - 1);
        if (j == 0) out = term; else out = (j % 2) ? out - term : out + term;
    }
    return out;
}

/* col_dmf: dy = −∇ℓ at y (the descent field), and the loss ℓ if want_loss */
static void field(const Spec *s, const double *y, const double *P0, const double *P1, double *dy, int want_loss,
                  double *loss, double *w) {
    int64_t N = s->N, d = s->d, e = s->e;
    /* pre[j] = W_j ⋯ W_0, a_j × e */
    double *pre[MAXN];
    double *cur = w;
    pre[0] = (double *)(y + s->off[0]);
    for (int64_t j = 1; j < N; j++) {
        pre[j] = cur; cur += s->a[j] * e;
        mm(y + s->off[j], pre[j - 1], pre[j], s->a[j], s->b[j], e, 0, 0);
    }
    const double *W = pre[N - 1];
    double *negG = cur; cur += d * e;
    double *r; int64_t nr;
    if (s->kind == 0) { /* completion: r = mask·(W − target) */
        r = cur; cur += d * e; nr = d * e;
        for (int64_t i = 0; i < d * e; i++) { r[i] = P0[i] * (W[i] - P1[i]); negG[i] = -r[i]; }
    } else { /* sensing: r_k = Σ A_k ⊙ W − b_k */
        int64_t m = s->m;
        r = cur; cur += m; nr = m;
        double *tmp = cur; cur += (d * e > m ? d * e : m);
        double *negr = cur; cur += m;
        for (int64_t k = 0; k < m; k++) {
            for (int64_t i = 0; i < d * e; i++) tmp[i] = P0[k * d * e + i] * W[i];
            r[k] = fsum(tmp, d * e) - P1[k];
            negr[k] = -r[k];
        }
        for (int64_t i = 0; i < d * e; i++) {
            for (int64_t k = 0; k < m; k++) tmp[k] = negr[k] * P0[k * d * e + i];
            negG[i] = fsum(tmp, m);
        }
    }
    /* grads: left = −G; for j = N … 1: grad_{j−1} = left·pre_{j−2}ᵀ (left itself for j = 1), left ← W_{j−1}ᵀ·left */
    double *left = negG;
    for (int64_t j = N; j >= 1; j--) {
        double *g = dy + s->off[j - 1];
        int64_t aj = s->a[j - 1];
        if (j == 1) {
            memcpy(g, left, sizeof(double) * aj * e);
        } else {
            mm(left, pre[j - 2], g, aj, e, s->a[j - 2], 0, 1);
            double *nl = cur; cur += s->b[j - 1] * e;
            mm(y + s->off[j - 1], left, nl, s->b[j - 1], aj, e, 1, 0);
            left = nl;
        }
    }
    if (want_loss) {
        double *sq = cur;
        for (int64_t i = 0; i < nr; i++) sq[i] = r[i] * r[i];
        *loss = 0.5 * fsum(sq, nr);
    }
}

/* col_guard: is some det W_j within the rounding of the state (safety 10)? */
static int guard(const Spec *s, const double *y, double err) {
    const double u = DBL_EPSILON, tiny = DBL_MIN;
    int bad = 0;
    for (int64_t j = 0; j < s->N; j++) {
        int64_t k = s->a[j];
        const double *W = y + s->off[j];
        double R[4] = {0.0, 0.0, 0.0, 0.0}, row[4];
        for (int64_t i = 0; i < k; i++) {
            for (int64_t q = 0; q < k; q++) row[q] = W[i * k + q] * W[i * k + q];
            R[i] = fsum(row, k);
        }
        double had = R[0], rmin = R[0];
        for (int64_t i = 1; i < k; i++) had = had * R[i];
        for (int64_t i = 1; i < k; i++) rmin = nmin(rmin, R[i]);
        if (!(rmin != rmin) && rmin < tiny) rmin = tiny;
        double sk = 10.0 * (double)k;
        double tau2 = ((2.0 * (sk * sk)) * ((((double)k * (err * err)) / rmin) + u * u)) * had;
        double dt = det(W, k, k);
        bad |= (dt * dt <= tau2);
    }
    return bad;
}

/* inv_root(msq, 2·order) with frexp: msq^(−1/(2·order)) */
static double inv_root(const Spec *s, double x, const double *table) {
    if (x != x) x = 1.0;
    else if (x == INFINITY) x = DBL_MAX;
    else if (x == -INFINITY) x = -DBL_MAX;
    const double lo = 0x1p-60, hi = 0x1p60;
    if (x < lo) x = lo;
    if (x > hi) x = hi;
    int ei;
    double f = frexp(x, &ei);
    int64_t index = (int64_t)ei + 64;
    if (index < 0) index = 0;
    if (index > 127) index = 127;
    double uu = (f - 0.75) * 4.0;
    const double *c = s->poly;
    int64_t nc = s->NC;
    double acc = uu * c[nc - 1] + c[nc - 2];
    for (int64_t q = nc - 3; q >= 0; q--) acc = acc * uu + c[q];
    return acc * table[index];
}

int64_t implreg_dmf_steps(
    int64_t n, int64_t max_iter, const int64_t *ispec, const double *dspec, const double *coef,
    const double *p0, const double *p1, const double *lv, const double *saves, const double *table,
    const uint8_t *active,
    double *t, double *y, double *k1, double *h, const double *tm, double *err_acc,
    int64_t *steps, int64_t *rej, int64_t *attempts, uint8_t *lev_done,
    double *t_o, double *y_o, double *k1_o, double *h_o, double *ea_o,
    int64_t *steps_o, int64_t *rej_o, int64_t *att_o, uint8_t *lev_done_o,
    int64_t *status, uint8_t *fired, uint8_t *lev_new, uint8_t *save_in, uint8_t *record, uint8_t *attention,
    double *hs_o, double *y_new_o, double *acc_err_o)
{
    Spec s;
    s.N = ispec[0]; s.kind = ispec[1]; s.m = ispec[2]; s.P = ispec[3]; s.L = ispec[4]; s.T = ispec[5];
    s.has_event = ispec[6]; s.has_guard = ispec[7]; s.S = ispec[8]; s.NC = ispec[9]; s.max_steps = ispec[10];
    if (s.N < 1 || s.N > MAXN || s.S < 2 || s.S > MAXS) return -1;
    int64_t off = 0;
    for (int64_t j = 0; j < s.N; j++) {
        s.a[j] = ispec[11 + 2 * j]; s.b[j] = ispec[12 + 2 * j]; s.off[j] = off; off += s.a[j] * s.b[j];
        if (s.a[j] > 4 || s.b[j] > 4) return -1;
    }
    if (off != s.P) return -1;
    s.d = s.a[s.N - 1]; s.e = s.b[0];
    s.p0_row = s.kind == 0 ? s.d * s.e : s.m * s.d * s.e;
    s.p1_row = s.kind == 0 ? s.d * s.e : s.m;
    s.A = coef; s.E = coef + s.S * s.S; s.poly = coef + s.S * s.S + s.S;
    s.rtol = dspec[0]; s.atol = dspec[1]; s.target = dspec[2]; s.limit = dspec[3]; s.tiny_step = dspec[4];
    const int64_t P = s.P, S = s.S, L = s.L, T = s.T;
    const double u = DBL_EPSILON;
    const double invP = 1.0 / (double)P;
    int64_t m = s.m > 0 ? s.m : 1;
    int64_t wsize = 8 * (4 * 4) * (s.N + 4) + 8 * m + 4 * 16 * 16 + 64;
    double *buf = (double *)malloc(sizeof(double) * (S * P + 4 * P + wsize));
    if (!buf) return -2;
    double *K = buf, *yi = K + S * P, *eloc = yi + P, *q = eloc + P, *acc = q + P, *w = acc + P;
    (void)acc;

    int64_t it;
    int any = 0;
    for (it = 0; it < max_iter; it++) {
        any = 0;
        for (int64_t i = 0; i < n; i++) {
            const double *yr = y + i * P;
            double *yo = y_o + i * P, *k1r = k1_o + i * P, *ear = ea_o + i * P;
            double *ynew = y_new_o + i * P, *accr = acc_err_o + i * P;
            uint8_t *lnew = lev_new ? lev_new + i * L : NULL;
            uint8_t *ldone_o = lev_done_o ? lev_done_o + i * L : NULL;
            uint8_t *sin = save_in ? save_in + i * T : NULL;
            if (!active[i]) {
                memcpy(yo, yr, sizeof(double) * P); memcpy(k1r, k1 + i * P, sizeof(double) * P);
                memcpy(ear, err_acc + i * P, sizeof(double) * P);
                t_o[i] = t[i]; h_o[i] = h[i]; steps_o[i] = steps[i]; rej_o[i] = rej[i]; att_o[i] = attempts[i];
                status[i] = 0; if (fired) fired[i] = 0; record[i] = 0; attention[i] = 0; hs_o[i] = h[i];
                for (int64_t l = 0; l < L; l++) { lnew[l] = 0; ldone_o[l] = lev_done[i * L + l]; }
                for (int64_t c = 0; c < T; c++) sin[c] = 0;
                memcpy(ynew, yr, sizeof(double) * P); memcpy(accr, err_acc + i * P, sizeof(double) * P);
                continue;
            }
            const double *P0 = p0 + i * s.p0_row, *P1 = p1 + i * s.p1_row;
            /* ---- the attempt (col_attempt) ---- */
            double ti = t[i], hi = h[i], tmi = tm[i];
            double rest = tmi - ti;
            int last = hi >= rest;
            double hs = last ? rest : hi;
            memcpy(K, k1 + i * P, sizeof(double) * P);
            double aux = 0.0;
            for (int64_t st = 1; st < S; st++) {
                for (int64_t p = 0; p < P; p++) {
                    double out = yr[p];
                    for (int64_t jj = 0; jj < st; jj++) {
                        double wgt = s.A[st * S + jj];
                        if (wgt != 0.0) out = out + (hs * wgt) * K[jj * P + p];
                    }
                    yi[p] = out;
                }
                int want = st == S - 1;
                field(&s, yi, P0, P1, K + st * P, want, &aux, w);
            }
            /* FSAL: y_new is the last stage's input */
            for (int64_t p = 0; p < P; p++) ynew[p] = yi[p];
            for (int64_t p = 0; p < P; p++) {
                double es = 0.0; int first = 1;
                for (int64_t jj = 0; jj < S; jj++) {
                    double wgt = s.E[jj];
                    if (wgt != 0.0) {
                        double term = wgt * K[jj * P + p];
                        es = first ? term : es + term; first = 0;
                    }
                }
                eloc[p] = hs * es;
            }
            for (int64_t p = 0; p < P; p++) {
                double sc = s.atol + s.rtol * nmax(fabs(yr[p]), fabs(ynew[p]));
                double qq = eloc[p] == 0 ? 0.0 : eloc[p] / sc;
                q[p] = qq * qq;
            }
            double msq = fsum(q, P) * invP;
            double ymax = fabs(ynew[0]);
            for (int64_t p = 1; p < P; p++) ymax = nmax(ymax, fabs(ynew[p]));
            int finite = isfinite(msq) && isfinite(ymax);
            double amx = 0.0;
            for (int64_t p = 0; p < P; p++) {
                int moved = 0;
                for (int64_t jj = 0; jj < S; jj++) moved |= K[jj * P + p] != 0;
                double ya = fabs(ynew[p]);
                accr[p] = err_acc[i * P + p] + (moved ? fabs(eloc[p]) + u * ya : 0.0);
                amx = p == 0 ? accr[0] : nmax(amx, accr[p]);
            }
            double t_new = last ? tmi : ti + hs;
            int bad = s.has_guard ? guard(&s, ynew, amx) : 0;
            /* ---- the step factor and rk_post ---- */
            double pf = inv_root(&s, msq, table);
            int accept = finite && (msq <= 1.0);
            double fac;
            if (finite) { fac = 0.9 * pf; fac = fac < 0.2 ? 0.2 : fac; fac = fac > 10.0 ? 10.0 : fac; }
            else fac = 0.25;
            if (!accept && fac > 1.0) fac = 1.0;
            double hn = hs * fac;
            int rejected = !accept;
            double at = fabs(ti); at = at < 1.0 ? 1.0 : at;
            int too_small = rejected && (hn <= s.tiny_step * at);
            int64_t att = attempts[i] + 1;
            if (accept) {
                memcpy(yo, ynew, sizeof(double) * P);
                memcpy(k1r, K + (S - 1) * P, sizeof(double) * P);
                memcpy(ear, accr, sizeof(double) * P);
                t_o[i] = t_new;
            } else {
                memcpy(yo, yr, sizeof(double) * P);
                memcpy(k1r, k1 + i * P, sizeof(double) * P);
                memcpy(ear, err_acc + i * P, sizeof(double) * P);
                t_o[i] = ti;
            }
            h_o[i] = hn; hs_o[i] = hs;
            steps_o[i] = steps[i] + accept; rej_o[i] = rej[i] + rejected; att_o[i] = att;
            int64_t stt = too_small ? 5 : 0;
            int ok = accept, fr = 0;
            if (s.has_event) {
                fr = accept && (aux - s.target <= 0);
                ok = ok && !fr;
                if (fr) stt = 2;
                fired[i] = (uint8_t)fr;
            }
            int big = ok && !(ymax < s.limit);
            if (big) stt = 4;
            ok = ok && !big;
            if (ok && last) stt = 1;
            if (s.has_guard && ok && bad) stt = 6;
            if (stt == 0 && att >= s.max_steps) stt = 3;
            status[i] = stt;
            int rec = fr;
            for (int64_t l = 0; l < L; l++) {
                int nw = accept && (aux - lv[l] <= 0) && !lev_done[i * L + l];
                lnew[l] = (uint8_t)nw;
                ldone_o[l] = (uint8_t)(lev_done[i * L + l] | nw);
                rec |= nw;
            }
            for (int64_t c = 0; c < T; c++) {
                int sv = accept && (saves[c] > ti) && (saves[c] <= t_new);
                sin[c] = (uint8_t)sv;
                rec |= sv;
            }
            record[i] = (uint8_t)rec;
            attention[i] = (uint8_t)((stt != 0) | rec);
            any |= attention[i];
        }
        if (any) break;
        /* a quiet step: commit it and go on */
        memcpy(t, t_o, sizeof(double) * n); memcpy(y, y_o, sizeof(double) * n * P);
        memcpy(k1, k1_o, sizeof(double) * n * P); memcpy(h, h_o, sizeof(double) * n);
        memcpy(err_acc, ea_o, sizeof(double) * n * P);
        memcpy(steps, steps_o, sizeof(int64_t) * n); memcpy(rej, rej_o, sizeof(int64_t) * n);
        memcpy(attempts, att_o, sizeof(int64_t) * n);
        if (L) memcpy(lev_done, lev_done_o, n * L);
    }
    free(buf);
    return any ? 1 : 0;
}
