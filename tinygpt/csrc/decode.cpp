// One cached forward pass of tinygpt's GPT for one sequence and a few new tokens, in a single call.
//
// Why: at batch 1 a pass is ~150 tiny PyTorch operations, and their dispatch costs more than the
// arithmetic. Here the same pass (embeddings -> L pre-LayerNorm blocks -> final LayerNorm -> head)
// is plain loops over float32 weights, reading and writing the model's own KV cache tensors.
// tinygpt/fused.py builds this file on first use and checks it against the PyTorch model.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

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

// y[m, :] = b + x[m, :] W^T for each of `rows` inputs, with W as panels (to_panels). Panels are
// shared out between threads; within one, the loop runs along its outputs, accumulating in registers.
void linear(const float* x, int64_t rows, int64_t in, const float* panels, const float* b, int64_t out, float* y) {
  const int64_t blocks = (out + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const float* panel = panels + block * in * kBlock;
      const int64_t j0 = block * kBlock, width = std::min(kBlock, out - j0);
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
  });
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

const float* data(const torch::Tensor& t) { return t.data_ptr<float>(); }

}  // namespace

// The model's float32 tensors, in the order tinygpt/fused.py passes them, and its KV caches.
class Decoder {
 public:
  Decoder(std::vector<torch::Tensor> weights, int64_t n_head) : weights_(std::move(weights)), n_head_(n_head) {
    TORCH_CHECK(weights_.size() >= 6 && (weights_.size() - 6) % 11 == 0, "unexpected number of weights");
    for (const auto& t : weights_)
      TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat, "weights must be contiguous float32");
    n_layer_ = static_cast<int64_t>(weights_.size() - 6) / 11;
    vocab_ = weights_[0].size(0);
    n_embd_ = weights_[0].size(1);
    block_size_ = weights_[1].size(0);
    TORCH_CHECK(n_embd_ % n_head_ == 0, "n_embd must be divisible by n_head");
    auto to_panel = [&](int64_t i) { weights_[i] = to_panels(weights_[i]); };  // `linear` reads panels
    for (int64_t l = 0; l < n_layer_; ++l)
      for (int64_t i : {2, 3, 7, 9}) to_panel(2 + 11 * l + i);
    to_panel(2 + 11 * n_layer_ + 2);
  }

  // Each layer's key and value cache, (1, n_head, block_size, head_size): read and written in place.
  void use_cache(std::vector<torch::Tensor> keys, std::vector<torch::Tensor> values) {
    TORCH_CHECK(static_cast<int64_t>(keys.size()) == n_layer_ && values.size() == keys.size(), "one cache per layer");
    for (const auto* caches : {&keys, &values})
      for (const auto& t : *caches)
        TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat && t.dim() == 4 && t.size(0) == 1 &&
                        t.size(1) == n_head_ && t.size(2) == block_size_ && t.size(3) == n_embd_ / n_head_,
                    "caches must be contiguous float32 (1, n_head, block_size, head_size)");
    keys_ = std::move(keys);
    values_ = std::move(values);
  }

  // tokens (K,) int64 at positions pos..pos+K-1 -> logits (K, vocab).
  torch::Tensor step(const torch::Tensor& tokens, int64_t pos) {
    const int64_t K = tokens.size(0), N = n_embd_;
    TORCH_CHECK(!keys_.empty(), "call use_cache first");
    TORCH_CHECK(tokens.dim() == 1 && tokens.scalar_type() == torch::kLong && tokens.is_contiguous(), "tokens: (K,) int64");
    TORCH_CHECK(pos >= 0 && pos + K <= block_size_, "positions past the context window");
    const int64_t* ids = tokens.data_ptr<int64_t>();
    for (int64_t m = 0; m < K; ++m) TORCH_CHECK(ids[m] >= 0 && ids[m] < vocab_, "token id out of range");
    std::vector<float> x(K * N), h(K * N), qkv(K * 3 * N), att(K * N), ff(K * 4 * N);

    const float* token_embedding = data(weights_[0]);
    const float* position_embedding = data(weights_[1]);
    for (int64_t m = 0; m < K; ++m)
      for (int64_t i = 0; i < N; ++i)
        x[m * N + i] = token_embedding[ids[m] * N + i] + position_embedding[(pos + m) * N + i];

    for (int64_t l = 0; l < n_layer_; ++l) {
      const torch::Tensor* w = &weights_[2 + 11 * l];  // ln1 (2), qkv, proj (2), ln2 (2), fc1 (2), fc2 (2)
      layer_norm(x.data(), K, N, data(w[0]), data(w[1]), h.data());
      linear(h.data(), K, N, data(w[2]), nullptr, 3 * N, qkv.data());
      attend(l, qkv.data(), K, pos, att.data());
      linear(att.data(), K, N, data(w[3]), data(w[4]), N, h.data());
      for (int64_t i = 0; i < K * N; ++i) x[i] += h[i];

      layer_norm(x.data(), K, N, data(w[5]), data(w[6]), h.data());
      linear(h.data(), K, N, data(w[7]), data(w[8]), 4 * N, ff.data());
      for (auto& v : ff) v = std::max(v, 0.f);
      linear(ff.data(), K, 4 * N, data(w[9]), data(w[10]), N, h.data());
      for (int64_t i = 0; i < K * N; ++i) x[i] += h[i];
    }
    const torch::Tensor* head = &weights_[2 + 11 * n_layer_];  // ln_f (2), lm_head (2)
    layer_norm(x.data(), K, N, data(head[0]), data(head[1]), h.data());
    torch::Tensor logits = torch::empty({K, vocab_}, torch::kFloat);
    linear(h.data(), K, N, data(head[2]), data(head[3]), vocab_, logits.data_ptr<float>());
    return logits;
  }

 private:
  // Store the new keys and values, then each new token attends to every cached position up to its own.
  void attend(int64_t layer, const float* qkv, int64_t K, int64_t pos, float* out) {
    const int64_t N = n_embd_, H = n_head_, D = N / H;
    float* keys = keys_[layer].data_ptr<float>();  // (1, H, block_size, D)
    float* values = values_[layer].data_ptr<float>();
    for (int64_t m = 0; m < K; ++m)
      for (int64_t hd = 0; hd < H; ++hd) {
        std::copy_n(qkv + m * 3 * N + N + hd * D, D, keys + (hd * block_size_ + pos + m) * D);
        std::copy_n(qkv + m * 3 * N + 2 * N + hd * D, D, values + (hd * block_size_ + pos + m) * D);
      }
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    at::parallel_for(0, K * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(pos + K);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t m = task / H, hd = task % H, seen = pos + m + 1;
        const float* q = qkv + m * 3 * N + hd * D;
        const float* k = keys + hd * block_size_ * D;
        const float* v = values + hd * block_size_ * D;
        float top = -INFINITY;
        for (int64_t t = 0; t < seen; ++t) {
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += q[d] * k[t * D + d];
          scores[t] = dot * scale;
          top = std::max(top, scores[t]);
        }
        float total = 0.f;
        for (int64_t t = 0; t < seen; ++t) total += scores[t] = std::exp(scores[t] - top);
        float* o = out + m * N + hd * D;
        std::fill_n(o, D, 0.f);
        for (int64_t t = 0; t < seen; ++t) {
          const float p = scores[t] / total;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) o[d] += p * v[t * D + d];
        }
      }
    });
  }

  std::vector<torch::Tensor> weights_, keys_, values_;
  int64_t n_layer_, n_head_, n_embd_, vocab_, block_size_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Decoder>(m, "Decoder")
      .def(pybind11::init<std::vector<torch::Tensor>, int64_t>())
      .def("use_cache", &Decoder::use_cache, "each layer's key and value cache tensors")
      .def("step", &Decoder::step, "tokens (K,) at positions pos.. -> logits (K, vocab)");
}
