// A cached forward pass of tinygpt's GPT over a few new tokens of B sequences, in a single call.
//
// Why: at small batches a pass is ~150 tiny PyTorch operations, and their dispatch costs more than
// the arithmetic. Here the same pass (embeddings -> L pre-LayerNorm blocks -> final LayerNorm ->
// head) is plain loops over float32 weights, found by their state_dict names, reading and writing
// the caller's KV cache, whose keys and values are int8, each head's vector at a position with its
// own float32 scale (as tinygpt.model's KVCache stores them): in a crowd, attention reads every
// sequence's cache at every step, from memory rather than the CPU's caches, and a quarter of float32's
// bytes is less wait. The arithmetic is float32 throughout. tinygpt/backends.py builds this file and
// checks it against PyTorch.

#include <torch/extension.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 64;  // output columns per panel: four AVX-512 registers of accumulators

// A Linear weight (out, in) rearranged for `linear`: (out / kBlock panels, in, kBlock), zero-padded,
// so that each panel of outputs is computed from one contiguous stretch of memory.
torch::Tensor to_panels(const torch::Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1), blocks = (out + kBlock - 1) / kBlock;
  torch::Tensor padded = torch::zeros({blocks * kBlock, in}, weight.options());
  padded.narrow(0, 0, out).copy_(weight);
  return padded.view({blocks, kBlock, in}).transpose(1, 2).contiguous();
}

// y[r, j0:j0+width] = b + x[r, :] . panel for R rows at once, so each weight loaded serves every row.
// The R x kBlock accumulators are a local array, so they can live in registers (R <= 5: 20 of 32).
template <int R>
void panel_rows(const float* __restrict x, int64_t in, const float* __restrict panel, const float* b, int64_t j0,
                int64_t width, int64_t out, float* __restrict y) {
  float acc[R][kBlock] = {};
  for (int64_t i = 0; i < in; ++i) {
    const float* wi = panel + i * kBlock;
    for (int r = 0; r < R; ++r) {
      const float xi = x[r * in + i];
#pragma omp simd
      for (int64_t j = 0; j < kBlock; ++j) acc[r][j] += xi * wi[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < width; ++j) y[r * out + j0 + j] = acc[r][j] + (b ? b[j0 + j] : 0.f);
}

constexpr int64_t kRows = 5;  // rows computed together
// Sequences per thread below which a step stays on one thread: a thread costs tens of microseconds
// to start, a step of a few sequences about a millisecond.
constexpr int64_t kRowsPerThread = 4;

// y[m, :] = b + x[m, :] W^T for each of `rows` inputs, with W as panels (to_panels). Within a panel,
// the loop runs along its outputs, accumulating in registers. One thread: waking an OpenMP team for
// each of a step's ~30 matrices cost more than it saved; large batches are split by sequence instead
// (Decoder::step).
void linear(const float* x, int64_t rows, int64_t in, const float* panels, const float* b, int64_t out, float* y) {
  for (int64_t j0 = 0; j0 < out; j0 += kBlock) {
    const float* panel = panels + j0 * in;
    const int64_t width = std::min(kBlock, out - j0);
    for (int64_t m = 0; m < rows; m += kRows) {
      const float* xm = x + m * in;
      float* ym = y + m * out;
      switch (std::min(kRows, rows - m)) {
        case 1: panel_rows<1>(xm, in, panel, b, j0, width, out, ym); break;
        case 2: panel_rows<2>(xm, in, panel, b, j0, width, out, ym); break;
        case 3: panel_rows<3>(xm, in, panel, b, j0, width, out, ym); break;
        case 4: panel_rows<4>(xm, in, panel, b, j0, width, out, ym); break;
        default: panel_rows<5>(xm, in, panel, b, j0, width, out, ym); break;
      }
    }
  }
}

void layer_norm(const float* x, int64_t rows, int64_t n, const float* gain, const float* bias, float* y) {
  for (int64_t m = 0; m < rows; ++m) {
    const float* xm = x + m * n;
    float mean = 0.f, var = 0.f;
    for (int64_t i = 0; i < n; ++i) mean += xm[i];
    mean /= n;
    for (int64_t i = 0; i < n; ++i) var += (xm[i] - mean) * (xm[i] - mean);
    const float scale = 1.f / std::sqrt(var / n + 1e-5f);
    for (int64_t i = 0; i < n; ++i) y[m * n + i] = (xm[i] - mean) * scale * gain[i] + bias[i];
  }
}

#if defined(__AVX512F__)
// 16 int8s from memory as float32s.
inline __m512 load_int8x16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#endif

// dst[i] = src[i] * scale, int8 to float32.
void widen(const int8_t* src, int64_t n, float scale, float* dst) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) * scale;
}

// dst[0..n) = src[0..n) / scale, rounded half to even (as torch.round) into -127..127, where scale is
// their largest magnitude over 127; returns the scale. tinygpt.model's `stored` does the same.
float quantize(const float* src, int64_t n, int8_t* dst) {
  float top = 0.f;
#pragma omp simd reduction(max : top)
  for (int64_t i = 0; i < n; ++i) top = std::max(top, std::fabs(src[i]));
  const float scale = std::max(top / 127.f, FLT_MIN);  // all zeros: 0 / FLT_MIN is 0, not 0 / 0
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    dst[i] = static_cast<int8_t>(std::min(std::max(std::nearbyint(src[i] / scale), -127.f), 127.f));
  return scale;
}

constexpr int64_t kKeys = 16;  // cached positions widened to float32 at a time (a few KB: stays in L1)

// Ask for n int8s from memory ahead of their use, a 64-byte line at a time.
void prefetch(const int8_t* p, int64_t n) {
#if defined(__GNUC__)
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(p + i);
#endif
}

// e^x for x <= 0 (a softmax's scores less their maximum) within 2 float ulp, in a form loops vectorise
// (std::exp is a call per element): e^x = 2^n e^g with n = round(x / ln 2), g = x - n ln 2 (ln 2 in two
// parts, so n * the first is exact), |g| <= 0.35; 2^n goes into the exponent bits, e^g is its Taylor
// series to the 7th power. Below e^-87 (nothing, beside the maximum's e^0) it returns e^-87.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.f);
  const float n = (x * 1.44269504f + 12582912.f) - 12582912.f;  // + 1.5 * 2^23 rounds away the fraction
  const float g = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  const float e = 1 + g * (1 + g * (1.f / 2 + g * (1.f / 6 + g * (1.f / 24 + g * (1.f / 120 + g * (1.f / 720 + g / 5040))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof two_to_n);
  return e * two_to_n;
}

// scores[t] = e^(scores[t] - top) for t < seen (top: their maximum); returns their sum.
inline float exponentiate(float* scores, int64_t seen, float top) {
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t t = 0; t < seen; ++t) total += scores[t] = exp_nonpositive(scores[t] - top);
  return total;
}

const float* data(const torch::Tensor& t) { return t.data_ptr<float>(); }

#if defined(__AVX512F__)
// The 16 sums of 16 vectors: out[i] = x[i][0] + ... + x[i][15], by a tree of shuffles and adds (45
// instructions, where reducing each vector alone takes ~8 each).
inline __m512 sum_each(const __m512 x[16]) {
  __m512 pairs[8], quads[4];
  for (int i = 0; i < 8; ++i)  // each 128-bit lane: partial sums of x[2i] and x[2i+1]
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i], x[2 * i + 1]), _mm512_unpackhi_ps(x[2 * i], x[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // each 128-bit lane: [x[4i], .., x[4i+3]], summed over that lane
    quads[i] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0xEE));
  const __m512 low = _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], 0x88), _mm512_shuffle_f32x4(quads[0], quads[1], 0xDD));
  const __m512 high = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], 0x88), _mm512_shuffle_f32x4(quads[2], quads[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xDD));
}

// head<64>'s computation in AVX-512 registers: the int8 keys and values are widened where they are
// used, 16 positions' scores are summed together (sum_each), and the output stays in registers.
void head64(const float* q, const int8_t* k, const float* k_scale, const int8_t* v, const float* v_scale, int64_t seen,
            float scale, float* scores, float* o) {
  constexpr int64_t D = 64;
  const __m512 q0 = _mm512_loadu_ps(q), q1 = _mm512_loadu_ps(q + 16), q2 = _mm512_loadu_ps(q + 32),
               q3 = _mm512_loadu_ps(q + 48);
  auto products = [&](const int8_t* kt) {  // q . kt, as 16 partial sums
    __m512 acc = _mm512_mul_ps(q0, load_int8x16(kt));
    acc = _mm512_fmadd_ps(q1, load_int8x16(kt + 16), acc);
    acc = _mm512_fmadd_ps(q2, load_int8x16(kt + 32), acc);
    return _mm512_fmadd_ps(q3, load_int8x16(kt + 48), acc);
  };
  const __m512 scale16 = _mm512_set1_ps(scale);
  __m512 top16 = _mm512_set1_ps(-INFINITY);
  int64_t t0 = 0;
  for (; t0 + kKeys <= seen; t0 += kKeys) {
    prefetch(k + (t0 + kKeys) * D, std::min(kKeys, seen - t0 - kKeys) * D);
    prefetch(v + t0 * D, kKeys * D);
    __m512 dots[kKeys];
    for (int64_t t = 0; t < kKeys; ++t) dots[t] = products(k + (t0 + t) * D);
    const __m512 s = _mm512_mul_ps(_mm512_mul_ps(sum_each(dots), _mm512_loadu_ps(k_scale + t0)), scale16);
    _mm512_storeu_ps(scores + t0, s);
    top16 = _mm512_max_ps(top16, s);
  }
  float top = _mm512_reduce_max_ps(top16);
  for (int64_t t = t0; t < seen; ++t) {
    scores[t] = _mm512_reduce_add_ps(products(k + t * D)) * k_scale[t] * scale;
    top = std::max(top, scores[t]);
  }
  const float total = exponentiate(scores, seen, top);
  // Two sets of accumulators, for even and odd positions: twice the additions in flight. Each
  // position's weight takes its value's scale along.
  __m512 even[4] = {}, odd[4] = {};
  int64_t t = 0;
  for (; t + 2 <= seen; t += 2) {
    const __m512 pe = _mm512_set1_ps(scores[t] * v_scale[t]), po = _mm512_set1_ps(scores[t + 1] * v_scale[t + 1]);
    for (int c = 0; c < 4; ++c) {
      even[c] = _mm512_fmadd_ps(pe, load_int8x16(v + t * D + 16 * c), even[c]);
      odd[c] = _mm512_fmadd_ps(po, load_int8x16(v + (t + 1) * D + 16 * c), odd[c]);
    }
  }
  if (t < seen) {
    const __m512 pe = _mm512_set1_ps(scores[t] * v_scale[t]);
    for (int c = 0; c < 4; ++c) even[c] = _mm512_fmadd_ps(pe, load_int8x16(v + t * D + 16 * c), even[c]);
  }
  const __m512 norm = _mm512_set1_ps(1.f / total);
  for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(_mm512_add_ps(even[c], odd[c]), norm));
}
#endif

// Helper threads kept for the decoder's life: a step's parts run on them, one part each. Started anew
// for every step, a thread cost tens of microseconds and, on a busy machine, a wait for a free core.
// Both sides of a hand-off check for a moment (kSpin) before they sleep: a step's parts end close
// together, and a sleeping thread takes long to wake on a busy machine.
class Team {
 public:
  explicit Team(int64_t helpers) {
    for (int64_t i = 0; i < helpers; ++i) threads_.emplace_back([this, i] { serve(i + 1); });
  }

  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
    }
    start_.notify_all();
    for (auto& thread : threads_) thread.join();
  }

  int64_t size() const { return static_cast<int64_t>(threads_.size()) + 1; }

  // job(part) for part 0 .. parts - 1 (at most size()) at the same time, part 0 on the calling thread;
  // returns when all are done. A second caller (two Python threads on one decoder) waits its turn.
  void run(int64_t parts, const std::function<void(int64_t)>& job) {
    if (parts <= 1) {
      job(0);
      return;
    }
    std::lock_guard<std::mutex> running(running_);
    job_ = &job;
    parts_ = parts;
    left_.store(static_cast<int64_t>(threads_.size()));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      round_.fetch_add(1);
    }
    start_.notify_all();
    try {
      job(0);
    } catch (...) {  // the helpers still use `job`: let them finish first
      await(finish_, [&] { return left_.load() == 0; });
      throw;
    }
    await(finish_, [&] { return left_.load() == 0; });
  }

 private:
  void serve(int64_t part) {
    uint64_t seen = 0;
    while (true) {
      await(start_, [&] { return stop_.load() || round_.load() != seen; });
      if (stop_.load()) return;
      seen = round_.load();
      if (part < parts_) (*job_)(part);
      if (left_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);  // so a caller about to sleep cannot miss the notify
      }
      finish_.notify_one();
    }
  }

  // Wait until ready(): check it for up to kSpin, then sleep on `signal`.
  template <class Ready>
  void await(std::condition_variable& signal, Ready ready) {
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    do {
      for (int i = 0; i < 16; ++i) {
        if (ready()) return;
#if defined(__SSE2__)
        _mm_pause();
#endif
      }
    } while (std::chrono::steady_clock::now() < deadline);
    std::unique_lock<std::mutex> lock(mutex_);
    signal.wait(lock, ready);
  }

  // Waits of 20 us slowed the crowded page; 50-800 us did about equally well.
  static constexpr std::chrono::microseconds kSpin{100};
  std::mutex mutex_, running_;
  std::condition_variable start_, finish_;
  std::atomic<uint64_t> round_{0};
  std::atomic<int64_t> left_{0};
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t parts_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// Where the parts of one prefill wait for each other, once per layer (Decoder::step).
class Barrier {
 public:
  explicit Barrier(int64_t parts) : parts_(parts) {}

  void wait() {
    const int64_t round = round_.load();
    if (arrived_.fetch_add(1) + 1 == parts_) {
      arrived_.store(0);
      round_.fetch_add(1);
      return;
    }
    while (round_.load() == round) std::this_thread::yield();  // a prefill's parts arrive close together
  }

 private:
  const int64_t parts_;
  std::atomic<int64_t> arrived_{0}, round_{0};
};

}  // namespace

// The model's float32 weights, taken from its state_dict by name, the matrices rearranged as panels.
class Decoder {
 public:
  Decoder(const std::map<std::string, torch::Tensor>& state, int64_t n_head, int64_t threads)
      : n_head_(n_head), team_(std::make_unique<Team>(std::max<int64_t>(threads, 1) - 1)) {
    auto get = [&](const std::string& name) {
      auto found = state.find(name);
      TORCH_CHECK(found != state.end(), "the state_dict has no tensor named ", name);
      TORCH_CHECK(found->second.scalar_type() == torch::kFloat, name, " must be float32");
      return found->second.contiguous();
    };
    token_embedding_ = get("token_embedding.weight");
    position_embedding_ = get("position_embedding.weight");
    vocab_ = token_embedding_.size(0);
    n_embd_ = token_embedding_.size(1);
    block_size_ = position_embedding_.size(0);
    TORCH_CHECK(n_head_ > 0 && n_embd_ % n_head_ == 0, "n_embd must be divisible by n_head");
    for (int64_t l = 0; state.count("blocks." + std::to_string(l) + ".ln1.weight"); ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      layers_.push_back({get(p + "ln1.weight"), get(p + "ln1.bias"), to_panels(get(p + "attn.qkv.weight")),
                         to_panels(get(p + "attn.proj.weight")), get(p + "attn.proj.bias"), get(p + "ln2.weight"),
                         get(p + "ln2.bias"), to_panels(get(p + "ffwd.net.0.weight")), get(p + "ffwd.net.0.bias"),
                         to_panels(get(p + "ffwd.net.2.weight")), get(p + "ffwd.net.2.bias")});
    }
    ln_f_weight_ = get("ln_f.weight");
    ln_f_bias_ = get("ln_f.bias");
    lm_head_ = to_panels(get("lm_head.weight"));
    lm_head_bias_ = get("lm_head.bias");
  }

  // tokens (B, T) int64, row b at positions positions[b]..positions[b]+T-1; keys and values int8
  // (n_layer, B or more, n_head, block_size, head_size), row b the cache of sequence b, each (n_head,
  // block_size, head_size) block contiguous, and their scales float32 (n_layer, B or more, n_head,
  // block_size), likewise: the new keys and values are written there. -> logits (B, T, vocab).
  torch::Tensor step(const torch::Tensor& tokens, const torch::Tensor& positions, torch::Tensor keys,
                     torch::Tensor values, torch::Tensor key_scales, torch::Tensor value_scales) {
    TORCH_CHECK(tokens.dim() == 2 && tokens.scalar_type() == torch::kLong && tokens.is_contiguous(),
                "tokens: (B, T) int64");
    const int64_t B = tokens.size(0), T = tokens.size(1), N = n_embd_, L = layers_.size();
    TORCH_CHECK(positions.dim() == 1 && positions.size(0) == B && positions.scalar_type() == torch::kLong &&
                    positions.is_contiguous(), "positions: (B,) int64");
    for (const auto* cache : {&keys, &values})
      TORCH_CHECK(cache->scalar_type() == torch::kChar && cache->dim() == 5 && cache->size(0) == L &&
                      cache->size(1) >= B && cache->size(2) == n_head_ && cache->size(3) == block_size_ &&
                      cache->size(4) == N / n_head_ && cache->stride(4) == 1 && cache->stride(3) == N / n_head_ &&
                      cache->stride(2) == block_size_ * N / n_head_,
                  "caches must be int8 (n_layer, B, n_head, block_size, head_size), each row's block contiguous");
    for (const auto* scales : {&key_scales, &value_scales})
      TORCH_CHECK(scales->scalar_type() == torch::kFloat && scales->dim() == 4 && scales->size(0) == L &&
                      scales->size(1) >= B && scales->size(2) == n_head_ && scales->size(3) == block_size_ &&
                      scales->stride(3) == 1 && scales->stride(2) == block_size_,
                  "scales must be float32 (n_layer, B, n_head, block_size), each row's block contiguous");
    const int64_t* ids = tokens.data_ptr<int64_t>();
    const int64_t* pos = positions.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) TORCH_CHECK(pos[b] >= 0 && pos[b] + T <= block_size_, "positions past the context window");
    for (int64_t m = 0; m < B * T; ++m) TORCH_CHECK(ids[m] >= 0 && ids[m] < vocab_, "token id out of range");
    const Batch batch{ids, pos, T, Cache(keys, key_scales), Cache(values, value_scales)};
    torch::Tensor logits = torch::empty({B, T, vocab_}, torch::kFloat);
    float* out = logits.data_ptr<float>();

    // Sequences never interact, so a large batch is cut into contiguous parts, each computed by its
    // own thread from start to end: one join per step. One sequence's prompt (a prefill) is cut by
    // rows instead, whose parts meet once per layer, where each row attends to the keys the others
    // stored. Either way each row is computed exactly as when alone.
    if (B == 1 && T >= 2 * kRowsPerThread && team_->size() > 1) {
      const int64_t parts = std::min(team_->size(), T / kRowsPerThread);
      Barrier layer(parts);
      team_->run(parts, [&](int64_t part) {
        forward(batch, T * part / parts, T * (part + 1) / parts, out, [&] { layer.wait(); });
      });
    } else {
      const std::vector<int64_t> bounds = split(pos, B, T, std::max<int64_t>(1, std::min(team_->size(), B / kRowsPerThread)));
      team_->run(static_cast<int64_t>(bounds.size()) - 1,
                 [&](int64_t part) { forward(batch, bounds[part] * T, bounds[part + 1] * T, out, [] {}); });
    }
    return logits;
  }

 private:
  struct Layer {
    torch::Tensor ln1_weight, ln1_bias, qkv, proj, proj_bias, ln2_weight, ln2_bias, fc1, fc1_bias, fc2, fc2_bias;
  };

  // A KV cache (n_layer, B, n_head, block_size, head_size) and its scales (n_layer, B, n_head,
  // block_size) as pointers: the blocks (l, b) are contiguous.
  struct Cache {
    Cache(torch::Tensor& t, torch::Tensor& s)
        : base(t.data_ptr<int8_t>()), scales(s.data_ptr<float>()), layer_stride(t.stride(0)), row_stride(t.stride(1)),
          scale_layer_stride(s.stride(0)), scale_row_stride(s.stride(1)) {}
    int8_t* at(int64_t l, int64_t b) const { return base + l * layer_stride + b * row_stride; }
    float* scales_at(int64_t l, int64_t b) const { return scales + l * scale_layer_stride + b * scale_row_stride; }
    int8_t* base;
    float* scales;
    int64_t layer_stride, row_stride, scale_layer_stride, scale_row_stride;
  };

  // A step's input: tokens (B, T), each row's first position, and the caches.
  struct Batch {
    const int64_t* ids;
    const int64_t* pos;
    int64_t T;
    Cache keys, values;
  };

  // Bounds 0 = b_0 <= b_1 <= ... <= b_parts = B of `parts` contiguous runs of sequences with about equal
  // work: a sequence's T rows cost their matrix products plus attention over its positions, which
  // grows with how far along it is (in a crowd, sequences range from just started to the window's
  // end). Per row, the products (~N^2 multiply-adds, at full speed) took as long as attending to about
  // N/3 positions (~N each, bound by memory) on the machines measured.
  std::vector<int64_t> split(const int64_t* pos, int64_t B, int64_t T, int64_t parts) const {
    auto cost = [&](int64_t b) { return T * (n_embd_ / 3 + pos[b] + T); };
    int64_t total = 0;
    for (int64_t b = 0; b < B; ++b) total += cost(b);
    std::vector<int64_t> bounds{0};
    int64_t done = 0;
    for (int64_t b = 0; b < B && static_cast<int64_t>(bounds.size()) < parts; ++b) {
      done += cost(b);
      if (done * parts >= total * static_cast<int64_t>(bounds.size())) bounds.push_back(b + 1);
    }
    bounds.push_back(B);
    return bounds;
  }

  // The forward pass of rows m0..m1-1 of `batch` (row m: sequence m / T, its (m % T)-th new token),
  // writing their logits into `logits` (B, T, vocab). Rows interact only through the cache: `stored()`
  // runs after each layer's new keys and values are written, before any row attends to them.
  template <class Sync>
  void forward(const Batch& batch, int64_t m0, int64_t m1, float* logits, Sync stored) const {
    const int64_t T = batch.T, K = m1 - m0, N = n_embd_, L = layers_.size();
    std::vector<float> x(K * N), h(K * N), qkv(K * 3 * N), att(K * N), ff(K * 4 * N);

    const float* token_embedding = data(token_embedding_);
    const float* position_embedding = data(position_embedding_);
    for (int64_t r = 0; r < K; ++r) {
      const int64_t m = m0 + r, id = batch.ids[m], p = batch.pos[m / T] + m % T;
      for (int64_t i = 0; i < N; ++i) x[r * N + i] = token_embedding[id * N + i] + position_embedding[p * N + i];
    }

    for (int64_t l = 0; l < L; ++l) {
      const Layer& w = layers_[l];
      layer_norm(x.data(), K, N, data(w.ln1_weight), data(w.ln1_bias), h.data());
      linear(h.data(), K, N, data(w.qkv), nullptr, 3 * N, qkv.data());
      store(qkv.data(), batch, l, m0, m1);
      stored();
      attend(qkv.data(), batch, l, m0, m1, att.data());
      linear(att.data(), K, N, data(w.proj), data(w.proj_bias), N, h.data());
      for (int64_t i = 0; i < K * N; ++i) x[i] += h[i];

      layer_norm(x.data(), K, N, data(w.ln2_weight), data(w.ln2_bias), h.data());
      linear(h.data(), K, N, data(w.fc1), data(w.fc1_bias), 4 * N, ff.data());
      for (auto& v : ff) v = std::max(v, 0.f);
      linear(ff.data(), K, 4 * N, data(w.fc2), data(w.fc2_bias), N, h.data());
      for (int64_t i = 0; i < K * N; ++i) x[i] += h[i];
    }
    layer_norm(x.data(), K, N, data(ln_f_weight_), data(ln_f_bias_), h.data());
    linear(h.data(), K, N, data(lm_head_), data(lm_head_bias_), vocab_, logits + m0 * vocab_);
  }

  // Store the new keys and values of rows m0..m1-1 (qkv: those rows) in their sequences' cache rows of layer l.
  void store(const float* qkv, const Batch& batch, int64_t l, int64_t m0, int64_t m1) const {
    const int64_t N = n_embd_, H = n_head_, D = N / H, S = block_size_, T = batch.T;
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t b = m / T, p = batch.pos[b] + m % T;
      const float* row = qkv + (m - m0) * 3 * N;
      for (int64_t hd = 0; hd < H; ++hd) {
        batch.keys.scales_at(l, b)[hd * S + p] = quantize(row + N + hd * D, D, batch.keys.at(l, b) + (hd * S + p) * D);
        batch.values.scales_at(l, b)[hd * S + p] =
            quantize(row + 2 * N + hd * D, D, batch.values.at(l, b) + (hd * S + p) * D);
      }
    }
  }

  // Each of rows m0..m1-1 attends to its sequence's cached positions up to its own. qkv and out: those rows.
  void attend(const float* qkv, const Batch& batch, int64_t l, int64_t m0, int64_t m1, float* out) const {
    const int64_t N = n_embd_, H = n_head_, D = N / H, S = block_size_, T = batch.T;
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    std::vector<float> scores(S), wide(kKeys * D);
    for (int64_t task = 0; task < (m1 - m0) * H; ++task) {
      const int64_t r = task / H, hd = task % H, m = m0 + r, b = m / T, seen = batch.pos[b] + m % T + 1;
      const float* q = qkv + r * 3 * N + hd * D;
      const int8_t* k = batch.keys.at(l, b) + hd * S * D;
      const int8_t* v = batch.values.at(l, b) + hd * S * D;
      const float* k_scale = batch.keys.scales_at(l, b) + hd * S;
      const float* v_scale = batch.values.scales_at(l, b) + hd * S;
      float* o = out + r * N + hd * D;
#if defined(__AVX512F__)
      if (D == 64) head64(q, k, k_scale, v, v_scale, seen, scale, scores.data(), o);
#else
      if (D == 64) head<64>(q, k, k_scale, v, v_scale, seen, D, scale, scores.data(), wide.data(), o);
#endif
      else head<0>(q, k, k_scale, v, v_scale, seen, D, scale, scores.data(), wide.data(), o);
    }
  }

  // One query of one head against its sequence's `seen` cached positions: o = softmax(q.k * scale) v,
  // the keys and values widened to float32 (times their scales) kKeys positions at a time. kD > 0 fixes
  // the head size at compile time (the shipped model's 64), so the inner loops are whole vector registers.
  template <int64_t kD>
  static void head(const float* __restrict q, const int8_t* k, const float* k_scale, const int8_t* v,
                   const float* v_scale, int64_t seen, int64_t head_size, float scale, float* __restrict scores,
                   float* __restrict wide, float* __restrict o) {
    const int64_t D = kD ? kD : head_size;
    float top = -INFINITY;
    for (int64_t t0 = 0; t0 < seen; t0 += kKeys) {
      const int64_t n = std::min(kKeys, seen - t0);
      // While these keys are scored, the next ones and these positions' values are fetched: a head's
      // run of positions is too short for the CPU's own prefetcher to get ahead.
      prefetch(k + (t0 + kKeys) * D, std::min(kKeys, seen - t0 - kKeys) * D);
      prefetch(v + t0 * D, n * D);
      for (int64_t t = 0; t < n; ++t) widen(k + (t0 + t) * D, D, k_scale[t0 + t], wide + t * D);
      for (int64_t t = 0; t < n; ++t) {
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < D; ++d) dot += q[d] * wide[t * D + d];
        scores[t0 + t] = dot * scale;
        top = std::max(top, dot * scale);
      }
    }
    const float total = exponentiate(scores, seen, top);
    std::fill_n(o, D, 0.f);
    for (int64_t t0 = 0; t0 < seen; t0 += kKeys) {
      const int64_t n = std::min(kKeys, seen - t0);
      for (int64_t t = 0; t < n; ++t) widen(v + (t0 + t) * D, D, v_scale[t0 + t], wide + t * D);
      for (int64_t t = 0; t < n; ++t) {
        const float p = scores[t0 + t] / total;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += p * wide[t * D + d];
      }
    }
  }

  torch::Tensor token_embedding_, position_embedding_, ln_f_weight_, ln_f_bias_, lm_head_, lm_head_bias_;
  std::vector<Layer> layers_;
  int64_t n_head_, n_embd_, vocab_, block_size_;
  std::unique_ptr<Team> team_;  // a pointer: a Team holds a mutex, which cannot move
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Decoder>(m, "Decoder")
      .def(pybind11::init<const std::map<std::string, torch::Tensor>&, int64_t, int64_t>(),
           "a state_dict, n_head, and the most threads a step may use")
      // Without the GIL: the page's server threads keep running while a step computes.
      .def("step", &Decoder::step, pybind11::call_guard<pybind11::gil_scoped_release>(),
           "tokens (B, T) at positions (B,) onwards, int8 caches and their scales -> logits (B, T, vocab)");
}
