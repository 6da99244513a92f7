// The C++ driver of the Verilator backend (apsq.hw.rae.verilator): mirrors the Amaranth testbenches
// cycle for cycle. Shipped as package data; no placeholders (port widths come from the model).
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

static std::vector<uint32_t> read_all(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(3); }
    std::fseek(f, 0, SEEK_END);
    long size = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    std::vector<uint32_t> buf(size / 4);
    if (std::fread(buf.data(), 4, buf.size(), f) != buf.size()) { std::perror("read"); std::exit(3); }
    std::fclose(f);
    return buf;
}

int main(int argc, char** argv) {
    if (argc != 3) { std::fprintf(stderr, "usage: %s STIM OUT\n", argv[0]); return 2; }
    std::vector<uint32_t> stim = read_all(argv[1]);
    const uint32_t n_passes = stim[0], iw = stim[1], ow = stim[2], bp = stim[3];
    rng_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)stim[4] * 0xD1B54A32D192ED03ULL) ;
    const uint32_t* cfg = &stim[5];
    const uint32_t* beats = cfg + 3 * n_passes;
    uint64_t total_out = 0, total_in = 0;
    for (uint32_t p = 0; p < n_passes; ++p) { total_out += cfg[3 * p + 1] + 1; total_in += cfg[3 * p + 2]; }
    if (stim.size() != 5 + 3 * (uint64_t)n_passes + total_in * iw) { std::fprintf(stderr, "bad stimulus size\n"); return 3; }
    std::vector<uint32_t> out(8 + total_out * ow, 0);
    uint32_t* outs = &out[8];

    VerilatedContext ctx;
    Vrae_top top(&ctx);
    top.clk = 0; top.rst = 1; top.i_valid = 0; top.o_ready = 0;
    for (int k = 0; k < 2; ++k) { top.clk = 1; top.eval(); top.clk = 0; top.eval(); }
    top.rst = 0; top.eval();

    auto t0 = std::chrono::steady_clock::now();
    uint64_t cycles = 0, n_in = 0, n_out = 0, hazard = 0, bpst = 0, idle = 0, expected = 0;
    uint32_t pass = 0, k_end = 0;
    uint64_t k = 0;
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
        top.eval();
        const bool take_in = top.i_valid && top.i_ready;
        if (top.i_valid && !top.i_ready) { if (top.o_valid && !top.o_ready) ++bpst; else ++hazard; }
        if (top.o_valid && top.o_ready) { get(top.o_payload, outs + n_out * ow, ow); ++n_out; }
        top.clk = 1; top.eval(); top.clk = 0; top.eval();
        ++cycles;
        if (take_in) {
            ++n_in; ++k; offered = false;
            if (k == k_end) { sending = false; top.i_valid = 0; expected += cfg[3 * pass + 1] + 1; ++pass; }
        }
        if (cycles > limit) { std::fprintf(stderr, "TIMEOUT after %llu cycles\n", (unsigned long long)cycles); return 4; }
    }
    uint64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    uint64_t head[8] = {cycles, n_in, n_out, hazard, bpst, idle, ns, 0};
    for (int j = 0; j < 6; ++j) out[j] = (uint32_t)head[j];
    out[6] = (uint32_t)ns; out[7] = (uint32_t)(ns >> 32);
    FILE* f = std::fopen(argv[2], "wb");
    if (!f) { std::perror(argv[2]); return 3; }
    std::fwrite(out.data(), 4, out.size(), f);
    std::fclose(f);
    top.final();
    return 0;
}
