// The C++ driver of the Verilator backend (apsq.hw.rae.verilator): mirrors the Amaranth testbenches
// (apsq.hw.rae.amaranth_sim) cycle for cycle. Shipped as package data; no placeholders (port widths
// come from the model).
//
// A server: it builds the model once, resets it, then answers requests on stdin with replies on
// stdout until stdin closes, so a caller pays the process start and the reset once, not per call.
// The engine is idle between requests (every output taken), so its state carries over exactly as
// between the passes of one request.
//
// Request (little-endian uint32): n_passes, in_words, out_words, bp_permille, seed, then per pass
// gs - 1, M - 1, beats, then the beats (in_words each).
// Reply: cycles, beats_in, beats_out, hazard, backpressure, idle, wall_ns_lo, wall_ns_hi, then the
// activity counted from the engine's enables at each clock edge: bank reads 0..3, bank writes 0..3,
// requantizations, closings; then the output payloads (out_words each). Exit 0 at the end of stdin; 3 on a malformed request, 4 when a
// request runs past its cycle limit (the message on stderr).
#include "Vrae_top.h"
#include "verilated.h"
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

template <class T> static void put(T& port, const uint32_t* w, int n) {
    uint64_t v = w[0];
    if (n > 1) v |= (uint64_t)w[1] << 32;
    port = (T)v;
}
template <std::size_t N> static void put(VlWide<N>& port, const uint32_t* w, int) {
    for (std::size_t i = 0; i < N; ++i) port[i] = w[i];
}
template <class T> static void get(const T& port, uint32_t* w, int n) {
    uint64_t v = (uint64_t)port;
    w[0] = (uint32_t)v;
    if (n > 1) w[1] = (uint32_t)(v >> 32);
}
template <std::size_t N> static void get(const VlWide<N>& port, uint32_t* w, int) {
    for (std::size_t i = 0; i < N; ++i) w[i] = port[i];
}

static uint64_t rng_state;
static bool draw(uint32_t permille) {  // xorshift64*: true with probability permille / 1000
    if (!permille) return false;
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return ((rng_state * 2685821657736338717ULL) >> 33) % 1000 < permille;
}

// Read exactly n words; false at a clean end of input (nothing read), exit 3 on a short read.
static bool read_words(uint32_t* dst, std::size_t n) {
    std::size_t got = std::fread(dst, 4, n, stdin);
    if (got == n) return true;
    if (got == 0 && std::feof(stdin)) return false;
    std::fprintf(stderr, "short request: %zu of %zu words\n", got, n);
    std::exit(3);
}

// One clock edge: the inputs were set and settled by the caller's eval() with clk = 0.
static inline void tick(Vrae_top& top) { top.clk = 1; top.eval(); top.clk = 0; }

int main() {
    VerilatedContext ctx;
    Vrae_top top(&ctx);
    top.clk = 0; top.rst = 1; top.i_valid = 0; top.o_ready = 0;
    for (int k = 0; k < 2; ++k) { top.eval(); tick(top); }
    top.rst = 0;

    uint32_t head[5];
    std::vector<uint32_t> cfgv, beatv, out;
    while (read_words(head, 5)) {
        const uint32_t n_passes = head[0], iw = head[1], ow = head[2], bp = head[3];
        rng_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)head[4] * 0xD1B54A32D192ED03ULL);
        cfgv.resize(3 * (std::size_t)n_passes);
        if (n_passes && !read_words(cfgv.data(), cfgv.size())) { std::fprintf(stderr, "no pass table\n"); return 3; }
        const uint32_t* cfg = cfgv.data();
        uint64_t total_out = 0, total_in = 0;
        for (uint32_t p = 0; p < n_passes; ++p) { total_out += cfg[3 * p + 1] + 1; total_in += cfg[3 * p + 2]; }
        beatv.resize(total_in * iw);
        if (total_in && !read_words(beatv.data(), beatv.size())) { std::fprintf(stderr, "no beats\n"); return 3; }
        const uint32_t* beats = beatv.data();
        const int HEAD = 18;
        out.assign(HEAD + total_out * ow, 0);
        uint32_t* outs = &out[HEAD];
        uint32_t* act = &out[8];  // rd[4], wr[4], rq, acc

        auto t0 = std::chrono::steady_clock::now();
        uint64_t cycles = 0, n_in = 0, n_out = 0, hazard = 0, bpst = 0, idle = 0, expected = 0;
        uint32_t pass = 0;
        uint64_t k = 0, k_end = 0;
        bool sending = false, offered = false;
        const uint64_t limit = 64 * (total_in + total_out) + 1000000;
        uint64_t n_out_prev = 0;  // outputs taken before the previous cycle: the Amaranth producer sees
                                  // the consumer's count one cycle late, and so does this one
        while (n_out < total_out) {
            const uint64_t seen = n_out_prev;
            n_out_prev = n_out;
            if (!sending && pass < n_passes) {
                if (!top.busy && seen >= expected) {
                    top.s0 = cfg[3 * pass] & 1; top.s1 = (cfg[3 * pass] >> 1) & 1; top.last_pos = cfg[3 * pass + 1];
                    k_end = k + cfg[3 * pass + 2];
                    sending = true; offered = false;
                }
            }
            if (sending && !offered) {
                if (draw(bp)) { top.i_valid = 0; ++idle; }
                else { put(top.i_payload, beats + k * iw, iw); top.i_valid = 1; offered = true; }
            } else if (!sending) {
                top.i_valid = 0;
                if (pass < n_passes) ++idle;
            }
            top.o_ready = draw(bp) ? 0 : 1;
            top.eval();  // settle the inputs (clk = 0): i_ready and o_valid of this cycle
            const bool take_in = top.i_valid && top.i_ready;
            if (top.i_valid && !top.i_ready) { if (top.o_valid && !top.o_ready) ++bpst; else ++hazard; }
            if (top.o_valid && top.o_ready) { get(top.o_payload, outs + n_out * ow, ow); ++n_out; }
            for (int b = 0; b < 4; ++b) { act[b] += (top.bank_rd >> b) & 1; act[4 + b] += (top.bank_wr >> b) & 1; }
            act[8] += top.rq; act[9] += top.acc;
            tick(top);
            ++cycles;
            if (take_in) {
                ++n_in; ++k; offered = false;
                if (k == k_end) { sending = false; top.i_valid = 0; expected += cfg[3 * pass + 1] + 1; ++pass; }
            }
            if (cycles > limit) { std::fprintf(stderr, "TIMEOUT after %llu cycles\n", (unsigned long long)cycles); return 4; }
        }
        top.i_valid = 0;
        uint64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
        const uint64_t stats[6] = {cycles, n_in, n_out, hazard, bpst, idle};
        for (int j = 0; j < 6; ++j) out[j] = (uint32_t)stats[j];
        out[6] = (uint32_t)ns; out[7] = (uint32_t)(ns >> 32);
        if (std::fwrite(out.data(), 4, out.size(), stdout) != out.size() || std::fflush(stdout) != 0) return 3;
    }
    top.final();
    return 0;
}
