/* implreg: integration steps of gradient flow on a small deep matrix factorization, many per call.
 *
 * The same arithmetic as the fused step kernel of implreg/matrix/flow/kernels.py (dmf_step_kernel: the
 * column form col_attempt + col_dmf + col_guard, inv_root with frexp, rk_post), operation for operation and
 * in the same order, so every row gets the same bits as the eager and compiled torch kernels.  That holds
 * because every operation here is an exactly rounded IEEE double operation (+ - * / and comparisons, frexp,
 * fabs), compiled with -ffp-contract=off (no fused multiply-add) and without -ffast-math (no reassociation).
 * Vector instructions do not change this: a SIMD add or multiply rounds each lane exactly as the scalar one.
 *
 * The loop takes integration steps for a batch of rows; a row that needs the host (a stopping event, a level
 * or save crossing, a finished row: the kernel's "attention") is written back and waits while the others go
 * on, and the call returns once a 32nd of the rows wait, so the Python loop sees every row's steps exactly as
 * it would have seen them one call at a time, minus the quiet ones.
 *
 * Layout: the caller's per-row arrays are batch-first and contiguous (row i of y is y[i*P .. i*P+P-1]).
 * Inside, rows are taken V at a time, "lanes", and every per-row quantity x of a block is stored lane-minor
 * (x[k*V + l] for lane l), so each scalar operation of the torch kernel becomes one loop over V lanes that the
 * compiler turns into a vector instruction.  A block at the end of the batch is padded with copies of its last
 * row, whose results are discarded.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <float.h>

#define MAXN 16   /* factors */
#define MAXS 16   /* RK stages */
#define PARK_SHARE 32  /* a call returns once 1/PARK_SHARE of its active rows wait for the host */
#define V 4       /* lanes: 4 doubles are one AVX2 register (two SSE2 ones); 8 measured 1.4-5x slower */
#define INLINE static inline __attribute__((always_inline))

/* V lanes of doubles, and the matching 64-bit masks that comparisons return (GCC/clang vector extensions);
   8-byte aligned so that any double array can be read as lanes, and allowed to alias double */
typedef double vd __attribute__((vector_size(V * 8), aligned(8), may_alias));
typedef int64_t vm __attribute__((vector_size(V * 8), aligned(8), may_alias));

/* one copy of the block step per instruction set, picked at load time (GCC and clang on x86-64 ELF); the
   AVX2 copy does the same IEEE operations four lanes at a time, and neither copy may contract into an FMA */
#if defined(__x86_64__) && defined(__ELF__) && !defined(IMPLREG_NO_CLONES)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

typedef struct {
    int64_t N, kind, m, P, L, T, has_event, has_guard, S, NC, max_steps;
    int64_t a[MAXN], b[MAXN], off[MAXN];
    int64_t d, e, p0_row, p1_row;
    const double *A;    /* S×S stage weights, row-major, zero padded */
    const double *E;    /* S error weights */
    const double *poly; /* NC monomial coefficients of f^(-1/m) in u = 4(f - 3/4) */
    double rtol, atol, target, limit, tiny_step;
} Spec;

/* A block's lane-minor arrays: the state a step starts from, and what it produces (rk_post's outputs). */
typedef struct {
    double *t, *y, *k1, *h, *ea;
    int64_t *steps, *rej, *att;
    uint8_t *ld;
} State;

typedef struct {
    State s;                       /* the state after the step (accepted or not) */
    double *hs, *y_new, *acc_err;
    int64_t *status;
    uint8_t *fired, *lev_new, *save_in, *record, *attention;
} Out;

INLINE vd splat(double x) { vd r; for (int l = 0; l < V; l++) r[l] = x; return r; }
INLINE vd vabs(vd x) { return (vd)((vm)x & ~(vm)splat(-0.0)); }
INLINE vd sel(vm m, vd a, vd b) { return (vd)(((vm)a & m) | ((vm)b & ~m)); }
/* nmax/nmin: NaN if either is NaN (torch.maximum/minimum), else x > y ? x : y (x < y ? x : y) */
INLINE vd nmax(vd x, vd y) { vd nan = (vd){0} + NAN; return sel((x != x) | (y != y), nan, sel(x > y, x, y)); }
INLINE vd nmin(vd x, vd y) { vd nan = (vd){0} + NAN; return sel((x != x) | (y != y), nan, sel(x < y, x, y)); }

/* col_fsum: s_i = x_i + x_{half+i}, an odd last one carried; destroys x; returns the sum */
INLINE vd fsum(vd *x, int64_t m) {
    while (m > 1) {
        int64_t half = m / 2;
        for (int64_t i = 0; i < half; i++) x[i] = x[i] + x[half + i];
        if (m % 2) { x[half] = x[2 * half]; m = half + 1; } else m = half;
    }
    return x[0];
}

/* C (ra×cb) = A (ra×k) · B (k×cb), each entry ((A_i0 B_0j + A_i1 B_1j) + …); tA/tB: read A or B transposed
   (A stored k×ra, B stored cb×k) */
INLINE void mm(const vd *A, const vd *B, vd *C, int64_t ra, int64_t k, int64_t cb, int tA, int tB) {
    const int64_t sa = tA ? ra : 1, sb = tB ? 1 : cb;
    for (int64_t i = 0; i < ra; i++)
        for (int64_t j = 0; j < cb; j++) {
            const vd *a0 = A + (tA ? i : i * k), *b0 = B + (tB ? j * k : j);
            vd c;
            switch (k) {  /* C's + is left-associative: ((a0 b0 + a1 b1) + a2 b2) + a3 b3, as the loop */
            case 2: c = a0[0] * b0[0] + a0[sa] * b0[sb]; break;
            case 3: c = a0[0] * b0[0] + a0[sa] * b0[sb] + a0[2 * sa] * b0[2 * sb]; break;
            case 4: c = a0[0] * b0[0] + a0[sa] * b0[sb] + a0[2 * sa] * b0[2 * sb] + a0[3 * sa] * b0[3 * sb]; break;
            default:
                c = a0[0] * b0[0];
                for (int64_t q = 1; q < k; q++) c = c + a0[q * sa] * b0[q * sb];
            }
            C[i * cb + j] = c;
        }
}

/* col_det: cofactor expansion along the first row, ((W_00 M_00 − W_01 M_01) + W_02 M_02) − …, for a k×k
   W with row stride rs (k ≤ 4) */
INLINE vd det2(const vd *W, int64_t rs) { return W[0] * W[rs + 1] - W[1] * W[rs]; }

INLINE void minor_of(const vd *W, int64_t k, int64_t rs, int64_t j, vd *mn) {
    int64_t c = 0;
    for (int64_t r = 1; r < k; r++)
        for (int64_t q = 0; q < k; q++)
            if (q != j) mn[c++] = W[r * rs + q];
}

INLINE vd det3(const vd *W, int64_t rs) {
    vd mn[4], out = {0};
    for (int64_t j = 0; j < 3; j++) {
        minor_of(W, 3, rs, j, mn);
        vd term = W[j] * det2(mn, 2);
        if (j == 0) out = term; else if (j == 1) out = out - term; else out = out + term;
    }
    return out;
}

INLINE vd det(const vd *W, int64_t k, int64_t rs) {
    if (k == 1) return W[0];
    if (k == 2) return det2(W, rs);
    if (k == 3) return det3(W, rs);
    vd mn[9], out = {0};
    for (int64_t j = 0; j < 4; j++) {
        minor_of(W, 4, rs, j, mn);
        vd term = W[j] * det3(mn, 3);
        if (j == 0) out = term; else if (j % 2) out = out - term; else out = out + term;
    }
    return out;
}

/* col_dmf: dy = −∇ℓ at y (the descent field), and the loss ℓ if want_loss */
INLINE void field(const Spec *s, const vd *y, const vd *P0, const vd *P1, vd *dy, int want_loss, vd *loss,
                  vd *w) {
    const int64_t N = s->N, e = s->e, de = s->d * s->e;
    /* pre[j] = W_j ⋯ W_0, a_j × e */
    const vd *pre[MAXN];
    vd *cur = w;
    pre[0] = y + s->off[0];
    for (int64_t j = 1; j < N; j++) {
        vd *pj = cur; cur += s->a[j] * e;
        mm(y + s->off[j], pre[j - 1], pj, s->a[j], s->b[j], e, 0, 0);
        pre[j] = pj;
    }
    const vd *W = pre[N - 1];
    vd *negG = cur; cur += de;
    vd *r; int64_t nr;
    if (s->kind == 0) { /* completion: r = mask·(W − target) */
        r = cur; cur += de; nr = de;
        for (int64_t i = 0; i < de; i++) { r[i] = P0[i] * (W[i] - P1[i]); negG[i] = -r[i]; }
    } else { /* sensing: r_k = Σ A_k ⊙ W − b_k */
        const int64_t m = s->m;
        r = cur; cur += m; nr = m;
        vd *tmp = cur; cur += (de > m ? de : m);
        vd *negr = cur; cur += m;
        for (int64_t k = 0; k < m; k++) {
            for (int64_t i = 0; i < de; i++) tmp[i] = P0[k * de + i] * W[i];
            r[k] = fsum(tmp, de) - P1[k];
            negr[k] = -r[k];
        }
        for (int64_t i = 0; i < de; i++) {
            for (int64_t k = 0; k < m; k++) tmp[k] = negr[k] * P0[k * de + i];
            negG[i] = fsum(tmp, m);
        }
    }
    /* grads: left = −G; for j = N … 1: grad_{j−1} = left·pre_{j−2}ᵀ (left itself for j = 1), left ← W_{j−1}ᵀ·left */
    const vd *left = negG;
    for (int64_t j = N; j >= 1; j--) {
        vd *g = dy + s->off[j - 1];
        const int64_t aj = s->a[j - 1];
        if (j == 1) {
            for (int64_t i = 0; i < aj * e; i++) g[i] = left[i];
        } else {
            mm(left, pre[j - 2], g, aj, e, s->a[j - 2], 0, 1);
            vd *nl = cur; cur += s->b[j - 1] * e;
            mm(y + s->off[j - 1], left, nl, s->b[j - 1], aj, e, 1, 0);
            left = nl;
        }
    }
    if (want_loss) {
        vd *sq = cur;
        for (int64_t i = 0; i < nr; i++) sq[i] = r[i] * r[i];
        *loss = 0.5 * fsum(sq, nr);
    }
}

/* col_guard: is some det W_j within the rounding of the state (safety 10)? (a mask per lane) */
INLINE vm guard(const Spec *s, const vd *y, vd err) {
    const double u = DBL_EPSILON, tiny = DBL_MIN;
    vm bad = {0};
    for (int64_t j = 0; j < s->N; j++) {
        const int64_t k = s->a[j];
        const vd *W = y + s->off[j];
        vd R[4], row[4];
        for (int64_t i = 0; i < k; i++) {
            for (int64_t q = 0; q < k; q++) row[q] = W[i * k + q] * W[i * k + q];
            R[i] = fsum(row, k);
        }
        vd had = R[0], rmin = R[0];
        for (int64_t i = 1; i < k; i++) had = had * R[i];
        for (int64_t i = 1; i < k; i++) rmin = nmin(rmin, R[i]);
        rmin = sel((rmin == rmin) & (rmin < tiny), splat(tiny), rmin);
        const double sk = 10.0 * (double)k;
        vd tau2 = ((2.0 * (sk * sk)) * ((((double)k * (err * err)) / rmin) + u * u)) * had;
        vd dt = det(W, k, k);
        bad |= (dt * dt <= tau2);
    }
    return bad;
}

/* inv_root(msq, 2·order) with frexp: msq^(−1/(2·order)), lane-wise.  After the clamp to [2⁻⁶⁰, 2⁶⁰] every x is
   a positive normal number, so frexp is exact bit surgery: f has x's mantissa with the exponent of 0.5, and
   x = f·2^(E − 1022) for x's biased exponent E. */
INLINE vd inv_root(const double *c, int64_t nc, vd x, const double *table) {
    x = sel(x != x, splat(1.0), x);
    x = sel(x == INFINITY, splat(DBL_MAX), x);
    x = sel(x == -INFINITY, splat(-DBL_MAX), x);
    const double lo = 0x1p-60, hi = 0x1p60;
    x = sel(x < lo, splat(lo), x);
    x = sel(x > hi, splat(hi), x);
    const vm bits = (vm)x;
    const vd f = (vd)((bits & ~(int64_t)0x7ff0000000000000LL) | (vm)splat(0.5));
    const vd uu = (f - 0.75) * 4.0;
    vd acc = uu * c[nc - 1] + c[nc - 2];
    for (int64_t q = nc - 3; q >= 0; q--) acc = acc * uu + c[q];
    vd scale;
    for (int l = 0; l < V; l++) {
        int64_t index = (int64_t)((bits[l] >> 52) & 0x7ff) - 1022 + 64;
        if (index < 0) index = 0;
        if (index > 127) index = 127;
        scale[l] = table[index];
    }
    return acc * scale;
}

/* One attempted step for the V rows of a block (col_attempt, the field, the guard, inv_root, rk_post), from
   state x into o; returns whether some active lane needs attention.  w: scratch. */
INLINE int block_body(const Spec *s, const State *x, Out *o, const uint8_t *active, const double *tm,
                     const double *P0, const double *P1, const double *lv, const double *saves,
                     const double *table, vd *w) {
    const int64_t P = s->P, S = s->S, L = s->L, T = s->T;
    const double u = DBL_EPSILON;
    const double invP = 1.0 / (double)P;
    vd *K = w, *yi = K + S * P, *eloc = yi + P, *q = eloc + P;
    vm *moved = (vm *)(q + P);
    vd *fw = q + 2 * P;
    const vd *Y = (const vd *)x->y, *EA = (const vd *)x->ea, *K1 = (const vd *)x->k1;
    const vd t0 = *(const vd *)x->t, h0 = *(const vd *)x->h, tmv = *(const vd *)tm;
    const vd zero = {0};
    /* ---- the attempt (col_attempt) ---- */
    const vd rest = tmv - t0;
    const vm lastm = h0 >= rest;
    const vd hs = sel(lastm, rest, h0);
    vd aux = zero;
    for (int64_t p = 0; p < P; p++) K[p] = K1[p];
    for (int64_t st = 1; st < S; st++) {
        /* y_i = ((y + (h a_i0) k_0) + (h a_i1) k_1) + …, over the nonzero weights, in that order for each p */
        vd hw[MAXS];
        const vd *kz[MAXS];
        int64_t nz = 0;
        for (int64_t jj = 0; jj < st; jj++) {
            const double wgt = s->A[st * S + jj];
            if (wgt != 0.0) { hw[nz] = hs * wgt; kz[nz] = K + jj * P; nz++; }
        }
        /* nz is known per stage: the common lengths as straight chains (each still summed left to right) */
#define T_(z) + hw[z] * kz[z][p]
        switch (nz) {
        case 1: for (int64_t p = 0; p < P; p++) yi[p] = Y[p] T_(0); break;
        case 2: for (int64_t p = 0; p < P; p++) yi[p] = Y[p] T_(0) T_(1); break;
        case 3: for (int64_t p = 0; p < P; p++) yi[p] = Y[p] T_(0) T_(1) T_(2); break;
        case 4: for (int64_t p = 0; p < P; p++) yi[p] = Y[p] T_(0) T_(1) T_(2) T_(3); break;
        case 5: for (int64_t p = 0; p < P; p++) yi[p] = Y[p] T_(0) T_(1) T_(2) T_(3) T_(4); break;
        case 6: for (int64_t p = 0; p < P; p++) yi[p] = Y[p] T_(0) T_(1) T_(2) T_(3) T_(4) T_(5); break;
        default:
            for (int64_t p = 0; p < P; p++) {
                vd out = Y[p];
                for (int64_t z = 0; z < nz; z++) out = out + hw[z] * kz[z][p];
                yi[p] = out;
            }
        }
#undef T_
        field(s, yi, (const vd *)P0, (const vd *)P1, K + st * P, st == S - 1, &aux, fw);
    }
    /* FSAL: y_new is the last stage's input */
    vd *ynew = (vd *)o->y_new, *accr = (vd *)o->acc_err;
    for (int64_t p = 0; p < P; p++) ynew[p] = yi[p];
    /* the local error h·Σ_j e_j k_j (nonzero weights, the first term alone), and which entries moved at all */
    double ew[MAXS];
    const vd *ez[MAXS];
    int64_t ne = 0;
    for (int64_t jj = 0; jj < S; jj++)
        if (s->E[jj] != 0.0) { ew[ne] = s->E[jj]; ez[ne] = K + jj * P; ne++; }
#define E_(z) + ew[z] * ez[z][p]
    switch (ne) {  /* as the stage sums: straight chains for the common lengths */
    case 6: for (int64_t p = 0; p < P; p++) eloc[p] = hs * (ew[0] * ez[0][p] E_(1) E_(2) E_(3) E_(4) E_(5)); break;
    case 7: for (int64_t p = 0; p < P; p++) eloc[p] = hs * (ew[0] * ez[0][p] E_(1) E_(2) E_(3) E_(4) E_(5) E_(6));
            break;
    default:
        for (int64_t p = 0; p < P; p++) {
            vd es = zero;
            if (ne > 0) es = ew[0] * ez[0][p];
            for (int64_t z = 1; z < ne; z++) es = es + ew[z] * ez[z][p];
            eloc[p] = hs * es;
        }
    }
#undef E_
    for (int64_t p = 0; p < P; p++) {
        vm mv = K[p] != 0;
        for (int64_t jj = 1; jj < S; jj++) mv |= K[jj * P + p] != 0;
        moved[p] = mv;
    }
    for (int64_t p = 0; p < P; p++) {
        vd scl = s->atol + s->rtol * nmax(vabs(Y[p]), vabs(ynew[p]));
        vd qq = sel(eloc[p] == 0, zero, eloc[p] / scl);
        q[p] = qq * qq;
    }
    const vd msq = fsum(q, P) * invP;
    vd ymax = vabs(ynew[0]);
    for (int64_t p = 1; p < P; p++) ymax = nmax(ymax, vabs(ynew[p]));
    vd amx = zero;
    for (int64_t p = 0; p < P; p++) {
        accr[p] = EA[p] + sel(moved[p], vabs(eloc[p]) + u * vabs(ynew[p]), zero);
        if (p == 0) amx = accr[0]; else amx = nmax(amx, accr[p]);
    }
    const vd t_new = sel(lastm, tmv, t0 + hs);
    vm bad = (vm)zero;
    if (s->has_guard) bad = guard(s, ynew, amx);
    /* ---- the step factor (rk_post): finite = isfinite(msq) ∧ isfinite(ymax); accept = finite ∧ msq ≤ 1 ---- */
    const vm finite = (msq - msq == 0) & (ymax - ymax == 0);
    const vm accept = finite & (msq <= 1.0);
    const vd pf = inv_root(s->poly, s->NC, msq, table);
    vd fac = 0.9 * pf;
    fac = sel(fac < 0.2, splat(0.2), fac);
    fac = sel(fac > 10.0, splat(10.0), fac);
    fac = sel(finite, fac, splat(0.25));
    fac = sel(~accept & (fac > 1.0), splat(1.0), fac);
    const vd hn = hs * fac;
    vd at = vabs(t0);
    at = sel(at < 1.0, splat(1.0), at);
    const vm too_small = ~accept & (hn <= s->tiny_step * at);
    /* the new state: the attempt where accepted, else the old one (also in frozen lanes) */
    vm take = accept;
    for (int l = 0; l < V; l++) if (!active[l]) take[l] = 0;
    vd *yo = (vd *)o->s.y, *k1o = (vd *)o->s.k1, *eao = (vd *)o->s.ea;
    const vd *klast = K + (S - 1) * P;
    for (int64_t p = 0; p < P; p++) {
        yo[p] = sel(take, ynew[p], Y[p]);
        k1o[p] = sel(take, klast[p], K1[p]);
        eao[p] = sel(take, accr[p], EA[p]);
    }
    /* ---- events, levels, saves and the status, lane by lane ---- */
    int any = 0;
    for (int l = 0; l < V; l++) {
        if (!active[l]) {
            for (int64_t p = 0; p < P; p++) {
                const int64_t k = p * V + l;
                o->y_new[k] = x->y[k]; o->acc_err[k] = x->ea[k];
            }
            o->s.t[l] = x->t[l]; o->s.h[l] = x->h[l]; o->s.steps[l] = x->steps[l]; o->s.rej[l] = x->rej[l];
            o->s.att[l] = x->att[l];
            o->status[l] = 0; o->fired[l] = 0; o->record[l] = 0; o->attention[l] = 0; o->hs[l] = x->h[l];
            for (int64_t c = 0; c < L; c++) { o->lev_new[c * V + l] = 0; o->s.ld[c * V + l] = x->ld[c * V + l]; }
            for (int64_t c = 0; c < T; c++) o->save_in[c * V + l] = 0;
            continue;
        }
        const int acc = accept[l] != 0;
        const int64_t att = x->att[l] + 1;
        o->s.t[l] = acc ? t_new[l] : x->t[l];
        o->s.h[l] = hn[l]; o->hs[l] = hs[l];
        o->s.steps[l] = x->steps[l] + acc; o->s.rej[l] = x->rej[l] + !acc; o->s.att[l] = att;
        int64_t stt = too_small[l] ? 5 : 0;
        int ok = acc, fr = 0;
        if (s->has_event) {
            fr = acc && (aux[l] - s->target <= 0);
            ok = ok && !fr;
            if (fr) stt = 2;
        }
        o->fired[l] = (uint8_t)fr;
        const int big = ok && !(ymax[l] < s->limit);
        if (big) stt = 4;
        ok = ok && !big;
        if (ok && lastm[l]) stt = 1;
        if (s->has_guard && ok && bad[l]) stt = 6;
        if (stt == 0 && att >= s->max_steps) stt = 3;
        o->status[l] = stt;
        int rec = fr;
        for (int64_t c = 0; c < L; c++) {
            const int done = x->ld[c * V + l];
            const int nw = acc && (aux[l] - lv[c] <= 0) && !done;
            o->lev_new[c * V + l] = (uint8_t)nw;
            o->s.ld[c * V + l] = (uint8_t)(done | nw);
            rec |= nw;
        }
        for (int64_t c = 0; c < T; c++) {
            const int sv = acc && (saves[c] > x->t[l]) && (saves[c] <= t_new[l]);
            o->save_in[c * V + l] = (uint8_t)sv;
            rec |= sv;
        }
        o->record[l] = (uint8_t)rec;
        o->attention[l] = (uint8_t)((stt != 0) | rec);
        any |= o->attention[l];
    }
    return any;
}

/* block_body as a function: the generic copy reads the shapes from the Spec at run time; the others are the same
   source with the shapes of the commonest problems (2×2 factors, depth 2–4: the Razin–Cohen claims and the W1
   benchmark) and the 7-stage tableau as compile-time constants, so that the compiler unrolls the small loops
   over factors, entries and stages.  Same operations in the same order, hence the same bits (tested against the
   eager torch kernel and against the generic copy, built alone with -DIMPLREG_GENERIC_ONLY).  Measured on W1
   (B = 1024, min of 7 runs alternating in one process): 1.16× faster, with block_body's straight stage and
   error sums; the library takes about 4 s to build instead of 1 (once, into the cache). */
#define STEP_ARGS const Spec *s, const State *x, Out *o, const uint8_t *active, const double *tm, \
    const double *P0, const double *P1, const double *lv, const double *saves, const double *table, vd *w
#define STEP_PASS x, o, active, tm, P0, P1, lv, saves, table, w
typedef int (*step_fn)(STEP_ARGS);
CLONES static int block_step(STEP_ARGS) { return block_body(s, STEP_PASS); }
#define SQUARE_STEP(NAME, KK, NN, KIND) \
CLONES static int NAME(STEP_ARGS) { \
    Spec c = *s;  /* the caller's Spec, with its shapes replaced by the same values as constants */ \
    c.N = NN; c.kind = KIND; c.P = NN * KK * KK; c.d = KK; c.e = KK; c.S = 7; \
    for (int j = 0; j < NN; j++) { c.a[j] = KK; c.b[j] = KK; c.off[j] = j * KK * KK; } \
    return block_body(&c, STEP_PASS); }
SQUARE_STEP(step_2x2_n2_completion, 2, 2, 0)
SQUARE_STEP(step_2x2_n3_completion, 2, 3, 0)
SQUARE_STEP(step_2x2_n4_completion, 2, 4, 0)
SQUARE_STEP(step_2x2_n2_sensing, 2, 2, 1)
SQUARE_STEP(step_2x2_n3_sensing, 2, 3, 1)
SQUARE_STEP(step_2x2_n4_sensing, 2, 4, 1)

/* the copy of block_body for this Spec: a constant-shape one where there is one, else the generic one */
static step_fn pick_step(const Spec *s) {
#ifndef IMPLREG_GENERIC_ONLY
    static const step_fn square2[2][3] = {
        {step_2x2_n2_completion, step_2x2_n3_completion, step_2x2_n4_completion},
        {step_2x2_n2_sensing, step_2x2_n3_sensing, step_2x2_n4_sensing}};
    int square = s->S == 7 && s->N >= 2 && s->N <= 4 && (s->kind == 0 || s->kind == 1);
    for (int64_t j = 0; square && j < s->N; j++) square = s->a[j] == 2 && s->b[j] == 2;
    if (square) return square2[s->kind][s->N - 2];
#endif
    return block_step;
}

/* ---- moving rows between the caller's row-major arrays and lane-minor blocks ---- */

/* block b's lanes of a row-major (n × w) array into dst (w × V lane-minor); padding lanes copy the last row
   (the way back is implreg_dmf_steps' WRITE_ROW, one row at a time) */
#define GATHER(dst, src, w, b, n) do { \
    for (int l = 0; l < V; l++) { \
        int64_t i_ = (b) * V + l; if (i_ >= (n)) i_ = (n) - 1; \
        for (int64_t k_ = 0; k_ < (w); k_++) (dst)[k_ * V + l] = (src)[i_ * (w) + k_]; \
    } } while (0)

/* lane-minor storage for nb blocks: one State (or Out) per block, carved from one allocation */
typedef struct {
    double *d; int64_t *i; uint8_t *u;
} Pool;

static int state_alloc(State *st, int64_t nb, int64_t P, int64_t L, Pool *pool) {
    const int64_t nd = nb * V * (3 * P + 3), ni = nb * V * 3, nu = nb * V * (L ? L : 1);
    pool->d = malloc(sizeof(double) * nd); pool->i = malloc(sizeof(int64_t) * ni); pool->u = malloc(nu);
    if (!pool->d || !pool->i || !pool->u) return -1;
    for (int64_t b = 0; b < nb; b++) {
        double *dd = pool->d + b * V * (3 * P + 3);
        int64_t *ii = pool->i + b * V * 3;
        State *x = st + b;
        x->y = dd; x->k1 = dd + P * V; x->ea = dd + 2 * P * V;
        x->t = dd + 3 * P * V; x->h = x->t + V; x->steps = ii; x->rej = ii + V; x->att = ii + 2 * V;
        x->ld = pool->u + b * V * (L ? L : 1);
    }
    return 0;
}

static void pool_free(Pool *p) { free(p->d); free(p->i); free(p->u); }

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
    if (s.N < 1 || s.N > MAXN || s.S < 2 || s.S > MAXS || n < 1 || max_iter < 1) return -1;
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
    const int64_t P = s.P, S = s.S, L = s.L, T = s.T, nb = (n + V - 1) / V;
    const int64_t m = s.m > 0 ? s.m : 1;

    /* lane-minor copies: the state (two sets, swapped on each quiet step), the outputs' extras, the inputs */
    State *cur = calloc(nb, sizeof(State)), *nxt = calloc(nb, sizeof(State));
    Out *outs = calloc(nb, sizeof(Out));
    Pool pa = {0}, pb = {0};
    const int64_t per_out = 2 * P + 1, per_u = 3 + L + T;  /* hs, y_new, acc_err; fired, record, attention, … */
    const int64_t wsize = S * P + 4 * P + 32 * (s.N + 4) + 8 * m + 64;
    double *od = malloc(sizeof(double) * nb * V * per_out);
    int64_t *oi = malloc(sizeof(int64_t) * nb * V);
    uint8_t *ou = malloc(nb * V * per_u);
    double *in_d = malloc(sizeof(double) * nb * V * (s.p0_row + s.p1_row + 1));
    uint8_t *act = malloc(nb * V);
    vd *w = malloc(sizeof(vd) * wsize);
    int64_t rc = -2;
    if (!cur || !nxt || !outs || !od || !oi || !ou || !in_d || !act || !w
        || state_alloc(cur, nb, P, L, &pa) || state_alloc(nxt, nb, P, L, &pb)) goto done;
    for (int64_t b = 0; b < nb; b++) {
        State *x = cur + b;
        GATHER(x->t, t, 1, b, n); GATHER(x->y, y, P, b, n); GATHER(x->k1, k1, P, b, n);
        GATHER(x->h, h, 1, b, n); GATHER(x->ea, err_acc, P, b, n);
        GATHER(x->steps, steps, 1, b, n); GATHER(x->rej, rej, 1, b, n);
        GATHER(x->att, attempts, 1, b, n);
        if (L) GATHER(x->ld, lev_done, L, b, n);
        double *ib = in_d + b * V * (s.p0_row + s.p1_row + 1);
        GATHER(ib, p0, s.p0_row, b, n);
        GATHER(ib + s.p0_row * V, p1, s.p1_row, b, n);
        GATHER(ib + (s.p0_row + s.p1_row) * V, tm, 1, b, n);
        for (int l = 0; l < V; l++) act[b * V + l] = (b * V + l < n) ? active[b * V + l] : 0;
        Out *o = outs + b;
        double *dd = od + b * V * per_out;
        o->hs = dd; o->y_new = dd + V; o->acc_err = dd + V + P * V;
        o->status = oi + b * V;
        uint8_t *uu = ou + b * V * per_u;
        o->fired = uu; o->record = uu + V; o->attention = uu + 2 * V; o->lev_new = uu + 3 * V;
        o->save_in = uu + (3 + L) * V;
    }

    const step_fn stepf = pick_step(&s);
    /* write back row i = b·V + l: the state its last step started from (x), and that step's results (r, o) */
#define PUT(dst, src, w_) for (int64_t k_ = 0; k_ < (w_); k_++) (dst)[i * (w_) + k_] = (src)[k_ * V + l]
#define WRITE_ROW(b, l) do { \
        const int64_t i = (b) * V + (l); const State *x = cur + (b), *r = &outs[b].s; const Out *o = outs + (b); \
        PUT(t, x->t, 1); PUT(y, x->y, P); PUT(k1, x->k1, P); PUT(h, x->h, 1); PUT(err_acc, x->ea, P); \
        PUT(steps, x->steps, 1); PUT(rej, x->rej, 1); PUT(attempts, x->att, 1); \
        if (L) { PUT(lev_done, x->ld, L); } \
        PUT(t_o, r->t, 1); PUT(y_o, r->y, P); PUT(k1_o, r->k1, P); PUT(h_o, r->h, 1); PUT(ea_o, r->ea, P); \
        PUT(steps_o, r->steps, 1); PUT(rej_o, r->rej, 1); PUT(att_o, r->att, 1); \
        if (L) { PUT(lev_done_o, r->ld, L); PUT(lev_new, o->lev_new, L); } \
        if (T) { PUT(save_in, o->save_in, T); } \
        if (fired) { PUT(fired, o->fired, 1); } \
        PUT(status, o->status, 1); PUT(record, o->record, 1); PUT(attention, o->attention, 1); \
        PUT(hs_o, o->hs, 1); PUT(y_new_o, o->y_new, P); PUT(acc_err_o, o->acc_err, P); \
    } while (0)
    /* Rows are independent (their own t, h, error control, events), so a row that needs the host is written
       back at once and parked (inactive for the rest of the call) while the others go on; the call returns
       once PARK_SHARE of the active rows wait (at least one), or after max_iter steps, or when none is left.
       Each row still returns the state its last step started from and that step's results, as one step at a
       time would: its attention step if parked, else its last quiet step (then both are the state after it).
       Why: at B = 4096, W1 returned to Python 926 times (once per finishing row), 6.6% of the solve outside C;
       parked rows idle at most PARK_SHARE of the lanes.  Blocks with no active lane are not stepped. */
    int64_t live = 0, parked = 0;
    for (int64_t i = 0; i < n; i++) live += act[i] != 0;
    const int64_t quota = live / PARK_SHARE > 1 ? live / PARK_SHARE : 1;
    uint8_t *gone = calloc(nb * V, 1);   /* parked rows (already written back) */
    if (!gone) goto done;
    /* the first step runs even with no active row: every lane then has results to write back (frozen copies) */
    for (int64_t it = 0; it < max_iter && (it == 0 || (live > 0 && parked < quota)); it++) {
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *ab = act + b * V;
            int on = 0;
            for (int l = 0; l < V; l++) on |= ab[l];
            if (!on && it > 0) continue;  /* step it once, so that every lane has results to write back */
            const double *ib = in_d + b * V * (s.p0_row + s.p1_row + 1);
            outs[b].s = nxt[b];
            if (stepf(&s, cur + b, outs + b, ab, ib + (s.p0_row + s.p1_row) * V, ib, ib + s.p0_row * V, lv,
                      saves, table, w)) {
                for (int l = 0; l < V; l++)
                    if (outs[b].attention[l] && b * V + l < n) {
                        WRITE_ROW(b, l);
                        act[b * V + l] = 0; gone[b * V + l] = 1; live--; parked++;
                    }
            }
            /* commit the step: the block starts its next step from it (parked lanes are inactive now) */
            State sw = cur[b]; cur[b] = nxt[b]; nxt[b] = sw;
        }
    }
    /* the rows not parked: their last step was quiet and is committed, so the state it started from is read
       back as the state after it (cur and outs[b].s are the same arrays), as the caller expects of a quiet step */
    for (int64_t b = 0; b < nb; b++)
        for (int l = 0; l < V; l++)
            if (b * V + l < n && !gone[b * V + l]) WRITE_ROW(b, l);
#undef WRITE_ROW
#undef PUT
    free(gone);
    rc = parked > 0;
done:
    pool_free(&pa); pool_free(&pb);
    free(cur); free(nxt); free(outs); free(od); free(oi); free(ou); free(in_d); free(act); free(w);
    return rc;
}

/* ---- the Rosenbrock solver's matrix inverse (implreg/matrix/flow/spectral.py: _inverse) ----
 *
 * Gauss–Jordan elimination with partial pivoting on [M | I] for each of n small P×P matrices, operation for
 * operation as the torch version: per column k the pivot is the first row i ≥ k with the largest |A_ik| (a NaN
 * counts as largest, as torch.argmax takes it), its row is swapped with row k, divided by the pivot, and
 * A_ij − f_i·prow_j is formed for every row with f_k = 0 (so row k gets prow_j − 0·prow_j, as there).  Why in C:
 * the torch version is about 12 dispatches per column (1 ms per call at P = 6), a tenth of a spectral claim's
 * time (det-sign-preserved: 9.8 of 52 s).  Returns 0, or −1 for bad sizes, −2 when out of memory. */
int64_t implreg_gauss_jordan(int64_t n, int64_t P, const double *M, double *out) {
    if (n < 0 || P < 1 || P > 4096) return -1;
    const int64_t w = 2 * P;
    double *A = malloc(sizeof(double) * P * w), *prow = malloc(sizeof(double) * w), *f = malloc(sizeof(double) * P);
    int64_t rc = -2;
    if (!A || !prow || !f) goto done;
    for (int64_t r = 0; r < n; r++) {
        const double *m = M + r * P * P;
        for (int64_t i = 0; i < P; i++)
            for (int64_t j = 0; j < P; j++) { A[i * w + j] = m[i * P + j]; A[i * w + P + j] = i == j ? 1.0 : 0.0; }
        for (int64_t k = 0; k < P; k++) {
            int64_t piv = k;
            double best = fabs(A[k * w + k]);
            for (int64_t i = k + 1; i < P && best == best; i++) {
                const double v = fabs(A[i * w + k]);
                if (v != v || v > best) { best = v; piv = i; }
            }
            if (piv != k)
                for (int64_t j = 0; j < w; j++) { double x = A[k * w + j]; A[k * w + j] = A[piv * w + j]; A[piv * w + j] = x; }
            const double p = A[k * w + k];
            for (int64_t j = 0; j < w; j++) prow[j] = A[k * w + j] / p;
            for (int64_t j = 0; j < w; j++) A[k * w + j] = prow[j];
            for (int64_t i = 0; i < P; i++) f[i] = i == k ? 0.0 : A[i * w + k];
            for (int64_t i = 0; i < P; i++)
                for (int64_t j = 0; j < w; j++) A[i * w + j] = A[i * w + j] - f[i] * prow[j];
        }
        double *o = out + r * P * P;
        for (int64_t i = 0; i < P; i++)
            for (int64_t j = 0; j < P; j++) o[i * P + j] = A[i * w + P + j];
    }
    rc = 0;
done:
    free(A); free(prow); free(f);
    return rc;
}
