// CPU kernels of ifn's compiled rasterizer (see ifn/render/raster_cpp.py and
// docs/cpu_rendering.md). Hand-written because no library offers this exact rasterizer:
// it must reproduce ifn.render.raster_torch.TorchRasterizer bit for bit.
//
// Every rounding step below mirrors one PyTorch op of TorchRasterizer, in the same order:
//   * integer edge functions on the 1/256-pixel grid (exact, so int64 everywhere gives the
//     same values as the torch path's int32/int64 mix);
//   * each float32 product-sum that PyTorch computes with addcmul is a fused multiply-add
//     when PyTorch's kernels fuse (FUSED=true, probed from Python), two roundings otherwise;
//   * torch.sum over three terms is ((0 + a) + b) + c;
//   * the depth test compares the same int64 key (float32 bits of 1/depth high, F-1-id low).
// Built with -ffp-contract=off so that the compiler adds no fusion of its own.
//
// Parallelism: one image (or, for batches smaller than the thread count, one band of an
// image's rows) per task on torch's intra-op threads (at::parallel_for); each thread has
// its own z-buffer and triangle tables, so threads never share a write.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace {

constexpr int kSubBits = 8;
constexpr int64_t kSub = 1 << kSubBits;
constexpr int64_t kHalf = kSub / 2;
constexpr float kCoordLimit = static_cast<float>(1 << 29);
constexpr int kTable = 8;  // per triangle: (origin, d/dj, d/di) of weights 1 and 2, then j0, i0

template <bool FUSED, typename T>
inline T madd(T a, T b, T c) {  // a * b + c, rounded as PyTorch's addcmul rounds it
  if constexpr (FUSED) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

inline int32_t snap(float v) {
  float s = std::nearbyint(v * static_cast<float>(kSub));  // half to even, like torch.round
  s = std::min(std::max(s, -kCoordLimit), kCoordLimit);
  return static_cast<int32_t>(s);
}

inline int64_t floor_shift(int64_t v) { return v >> kSubBits; }  // arithmetic shift = floor

// Bands of rows per image: 1 when the batch has an image per thread; otherwise enough for
// every thread (at least 16 rows each), so that one image, e.g. a single face being
// refined, still uses all threads. Results do not depend on it: a band computes exactly
// the cells and pixels of its rows, with the same arithmetic.
inline int64_t bands_for(int64_t batch, int64_t height) {
  const int64_t threads = at::get_num_threads();
  if (batch <= 0 || batch >= threads) return 1;
  return std::max<int64_t>(1, std::min<int64_t>((threads + batch - 1) / batch, height / 16));
}

// Runs work(worker_state, b, row_lo, row_hi) for every band of every image on torch's
// intra-op threads. Tasks are handed out one at a time from a shared counter rather than
// in fixed halves, so a thread slowed by other processes does not hold the others up.
template <typename MakeState, typename Work>
void for_each_task(int64_t batch, int64_t height, int64_t bands, const MakeState& make_state, const Work& work) {
  std::atomic<int64_t> next{0};
  const int64_t n_tasks = batch * bands;
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(n_tasks, at::get_num_threads()));
  at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
    auto state = make_state();
    for (int64_t task = next++; task < n_tasks; task = next++) {
      const int64_t b = task / bands, band = task % bands;
      work(state, b, band * height / bands, (band + 1) * height / bands);
    }
  });
}

template <bool FUSED>
void rasterize_image(const float* __restrict verts, const int64_t* __restrict tris, int64_t n_vertices,
                     int64_t n_faces, int64_t height, int64_t width, int64_t* __restrict out_id,
                     float* __restrict out_bary, int32_t* __restrict sx, int32_t* __restrict sy,
                     float* __restrict inv_w, uint8_t* __restrict ok, int64_t* __restrict zbuf,
                     float* __restrict table, int64_t row_lo, int64_t row_hi) {
  for (int64_t v = 0; v < n_vertices; ++v) {
    const float x = verts[3 * v], y = verts[3 * v + 1], w = verts[3 * v + 2];
    const bool valid = std::isfinite(x) && std::isfinite(y) && std::isfinite(w) && w > 0.0f;
    ok[v] = valid;
    if (valid) {
      sx[v] = snap(x);
      sy[v] = snap(y);
      inv_w[v] = 1.0f / w;
    }
  }
  // Empty pixel: high word -1, low word F (decodes to id -1, loses to every covered cell).
  const int64_t empty_key = n_faces - (int64_t(1) << 32);
  std::fill(zbuf + row_lo * width, zbuf + row_hi * width, empty_key);

  for (int64_t f = 0; f < n_faces; ++f) {
    const int64_t vi[3] = {tris[3 * f], tris[3 * f + 1], tris[3 * f + 2]};
    if (!(ok[vi[0]] & ok[vi[1]] & ok[vi[2]])) continue;
    const int64_t X[3] = {sx[vi[0]], sx[vi[1]], sx[vi[2]]};
    const int64_t Y[3] = {sy[vi[0]], sy[vi[1]], sy[vi[2]]};
    const int64_t lo_x = std::min({X[0], X[1], X[2]}), hi_x = std::max({X[0], X[1], X[2]});
    const int64_t lo_y = std::min({Y[0], Y[1], Y[2]}), hi_y = std::max({Y[0], Y[1], Y[2]});
    // Tight box of pixel centres 256 j + 128 within [lo, hi], clipped to the image.
    const int64_t j0 = std::max<int64_t>(floor_shift(lo_x + kHalf - 1), 0);
    const int64_t i0 = std::max<int64_t>(floor_shift(lo_y + kHalf - 1), 0);
    const int64_t box_w = std::min<int64_t>(floor_shift(hi_x - kHalf), width - 1) - j0 + 1;
    const int64_t box_h = std::min<int64_t>(floor_shift(hi_y - kHalf), height - 1) - i0 + 1;
    if (box_w <= 0 || box_h <= 0) continue;
    const int64_t di_lo = std::max<int64_t>(0, row_lo - i0), di_hi = std::min<int64_t>(box_h, row_hi - i0);
    if (di_lo >= di_hi) continue;  // no row in this band

    // Edge k is opposite vertex k, from vertex k+1 to k+2, evaluated at the box origin.
    const int64_t px0 = j0 * kSub + kHalf, py0 = i0 * kSub + kHalf;
    int64_t e[3], dx[3], dy[3];
    for (int k = 0; k < 3; ++k) {
      const int a = (k + 1) % 3, b = (k + 2) % 3;
      dx[k] = X[b] - X[a];
      dy[k] = Y[b] - Y[a];
      e[k] = (py0 - Y[a]) * dx[k] - (px0 - X[a]) * dy[k];
    }
    const int64_t twice_area = e[0] + e[1] + e[2];
    if (twice_area == 0) continue;  // zero area: the biased test never accepts a cell
    const int64_t orient = twice_area > 0 ? 1 : -1;
    int64_t step_j[3], step_i[3], biased[3];
    for (int k = 0; k < 3; ++k) {
      e[k] *= orient;
      step_j[k] = dy[k] * orient * -kSub;
      step_i[k] = dx[k] * orient * kSub;
      // Top-left rule: a centre on the edge is inside iff the inside lies to its right, or
      // below a horizontal edge; biased so that "covered" is E >= 0.
      const int64_t top_left = (step_j[k] + (step_i[k] > 0 ? 1 : 0)) > 0 ? 1 : 0;
      biased[k] = e[k] + top_left - 1;
    }

    // Perspective weights n_k(p) / |2A| / w_k are affine on the screen; so is their sum,
    // 1/depth. Rounded as the torch path rounds them.
    float plane[3];
    {
      const float recip = 1.0f / std::fabs(static_cast<float>(twice_area));
      float ef[3][3];  // [origin, d/dj, d/di][vertex k]
      for (int k = 0; k < 3; ++k) {
        const float siw = inv_w[vi[k]] * recip;
        ef[0][k] = static_cast<float>(e[k]) * siw;
        ef[1][k] = static_cast<float>(step_j[k]) * siw;
        ef[2][k] = static_cast<float>(step_i[k]) * siw;
      }
      for (int r = 0; r < 3; ++r) plane[r] = ((0.0f + ef[r][0]) + ef[r][1]) + ef[r][2];
      float* t = table + kTable * f;
      t[0] = ef[0][1];
      t[1] = ef[1][1];
      t[2] = ef[2][1];
      t[3] = ef[0][2];
      t[4] = ef[1][2];
      t[5] = ef[2][2];
      t[6] = static_cast<float>(j0);
      t[7] = static_cast<float>(i0);
    }
    const uint64_t low = static_cast<uint32_t>(static_cast<int32_t>(n_faces - 1 - f));
    // Branch-free cells: whether a cell is covered is close to random for small
    // triangles, so a mask and a max beat a mispredicted branch.
    float fdi = static_cast<float>(di_lo);
    for (int64_t di = di_lo; di < di_hi; ++di, fdi += 1.0f) {
      int64_t E0 = biased[0] + step_i[0] * di;
      int64_t E1 = biased[1] + step_i[1] * di;
      int64_t E2 = biased[2] + step_i[2] * di;
      int64_t* zrow = zbuf + (i0 + di) * width + j0;
      const float z_row = madd<FUSED>(plane[2], fdi, plane[0]);
      float fdj = 0.0f;
      for (int64_t dj = 0; dj < box_w; ++dj, fdj += 1.0f, E0 += step_j[0], E1 += step_j[1], E2 += step_j[2]) {
        const float z = z_row + plane[1] * fdj;
        uint32_t bits;
        std::memcpy(&bits, &z, sizeof bits);
        const int64_t key = static_cast<int64_t>((static_cast<uint64_t>(bits) << 32) | low);
        const int64_t outside = (E0 | E1 | E2) >> 63;  // all ones where not covered
        const int64_t masked = (key & ~outside) | (outside & std::numeric_limits<int64_t>::min());
        zrow[dj] = std::max(zrow[dj], masked);
      }
    }
  }

  // Resolve: decode the winner of each pixel and its barycentrics.
  float fi = static_cast<float>(row_lo);
  for (int64_t i = row_lo; i < row_hi; ++i, fi += 1.0f) {
    float fj = 0.0f;
    for (int64_t j = 0; j < width; ++j, fj += 1.0f) {
      const int64_t p = i * width + j;
      const uint64_t key = static_cast<uint64_t>(zbuf[p]);
      const int64_t id = n_faces - 1 - static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(key)));
      float* bary = out_bary + 3 * p;
      out_id[p] = id;
      if (id < 0) {
        bary[0] = bary[1] = bary[2] = 0.0f;
        continue;
      }
      const uint32_t high = static_cast<uint32_t>(key >> 32);
      float zinv;
      std::memcpy(&zinv, &high, sizeof zinv);
      float inv_total = 1.0f / zinv;
      if (!std::isfinite(inv_total)) inv_total = 0.0f;  // nan_to_num(0, 0, 0)
      const float* t = table + kTable * id;
      const float d_col = fj - t[6];
      const float d_row = fi - t[7];
      const float w1 = madd<FUSED>(t[2], d_row, madd<FUSED>(t[1], d_col, t[0])) * inv_total;
      const float w2 = madd<FUSED>(t[5], d_row, madd<FUSED>(t[4], d_col, t[3])) * inv_total;
      const float sign = inv_total > 0.0f ? 1.0f : (inv_total < 0.0f ? -1.0f : 0.0f);
      bary[0] = (sign - w1) - w2;
      bary[1] = w1;
      bary[2] = w2;
    }
  }
}

void check_triangles(const at::Tensor& triangles, int64_t n_vertices) {
  TORCH_CHECK(triangles.dim() == 2 && triangles.size(1) == 3, "triangles must be (F, 3), got ", triangles.sizes());
  TORCH_CHECK(triangles.scalar_type() == at::kLong && triangles.is_contiguous(), "triangles must be contiguous int64");
  const int64_t* t = triangles.const_data_ptr<int64_t>();
  const int64_t n = triangles.numel();
  bool in_range = true;
  for (int64_t i = 0; i < n; ++i) in_range &= (t[i] >= 0) & (t[i] < n_vertices);
  TORCH_CHECK(in_range, "triangle indices must lie in [0, ", n_vertices, ")");
}

std::tuple<at::Tensor, at::Tensor> rasterize(const at::Tensor& vertices, const at::Tensor& triangles, int64_t height,
                                             int64_t width, bool fused) {
  TORCH_CHECK(vertices.device().is_cpu(), "the compiled rasterizer runs on the CPU only");
  TORCH_CHECK(vertices.dim() == 3 && vertices.size(2) == 3, "vertices must be (B, V, 3), got ", vertices.sizes());
  TORCH_CHECK(vertices.scalar_type() == at::kFloat && vertices.is_contiguous(), "vertices must be contiguous float32");
  TORCH_CHECK(height > 0 && width > 0, "image size must be positive");
  const int64_t batch = vertices.size(0), n_vertices = vertices.size(1), n_faces = triangles.size(0);
  check_triangles(triangles, n_vertices);
  at::Tensor triangle_id = at::empty({batch, height, width}, vertices.options().dtype(at::kLong));
  at::Tensor barycentric = at::empty({batch, height, width, 3}, vertices.options());
  const float* vp = vertices.const_data_ptr<float>();
  const int64_t* tp = triangles.const_data_ptr<int64_t>();
  int64_t* idp = triangle_id.mutable_data_ptr<int64_t>();
  float* bp = barycentric.mutable_data_ptr<float>();
  const int64_t n_pixels = height * width;
  struct Scratch {
    std::vector<int32_t> sx, sy;
    std::vector<float> inv_w;
    std::vector<uint8_t> ok;
    std::vector<int64_t> zbuf;
    std::vector<float> table;
  };
  auto make_state = [&] {
    return Scratch{std::vector<int32_t>(n_vertices), std::vector<int32_t>(n_vertices), std::vector<float>(n_vertices),
                   std::vector<uint8_t>(n_vertices),   std::vector<int64_t>(n_pixels),
                   std::vector<float>(kTable * std::max<int64_t>(n_faces, 1))};
  };
  auto run = fused ? rasterize_image<true> : rasterize_image<false>;
  for_each_task(batch, height, bands_for(batch, height), make_state,
                [&](Scratch& w, int64_t b, int64_t row_lo, int64_t row_hi) {
                  run(vp + b * n_vertices * 3, tp, n_vertices, n_faces, height, width, idp + b * n_pixels,
                      bp + b * n_pixels * 3, w.sx.data(), w.sy.data(), w.inv_w.data(), w.ok.data(), w.zbuf.data(),
                      w.table.data(), row_lo, row_hi);
                });
  return {triangle_id, barycentric};
}

void check_fragments(const at::Tensor& triangle_id, const at::Tensor& barycentric, int64_t batch) {
  TORCH_CHECK(triangle_id.dim() == 3 && triangle_id.scalar_type() == at::kLong && triangle_id.is_contiguous(),
              "triangle_id must be contiguous int64 (B, H, W)");
  TORCH_CHECK(triangle_id.size(0) == batch, "fragments batch ", triangle_id.size(0), " != ", batch);
  TORCH_CHECK(barycentric.dim() == 4 && barycentric.size(3) == 3 && barycentric.scalar_type() == at::kFloat &&
                  barycentric.is_contiguous(),
              "barycentric must be contiguous float32 (B, H, W, 3)");
  TORCH_CHECK(barycentric.sizes().slice(0, 3) == triangle_id.sizes(), "barycentric and triangle_id shapes differ");
}

// Pixels [begin, end) of one image. NC > 0 fixes the channel count at compile time (the
// common 3: unrolled), NC = 0 reads it from `channels`. Returns false on an id >= F.
template <bool FUSED, typename T, int NC>
bool interpolate_pixels(const T* __restrict a, const int64_t* __restrict ids, const float* __restrict bary,
                        const int64_t* __restrict tris, int64_t n_faces, int64_t channels, int64_t begin,
                        int64_t end, T* __restrict out) {
  const int64_t nc = NC > 0 ? NC : channels;
  bool ok = true;
  for (int64_t p = begin; p < end; ++p) {
    T* o = out + p * nc;
    const int64_t id = ids[p];
    if (id < 0 || id >= n_faces) {
      ok &= id < n_faces;
      for (int64_t c = 0; c < nc; ++c) o[c] = T(0);
      continue;
    }
    const T* a0 = a + tris[3 * id] * nc;
    const T* a1 = a + tris[3 * id + 1] * nc;
    const T* a2 = a + tris[3 * id + 2] * nc;
    const T w0 = static_cast<T>(bary[3 * p]), w1 = static_cast<T>(bary[3 * p + 1]);
    const T w2 = static_cast<T>(bary[3 * p + 2]);
    for (int64_t c = 0; c < nc; ++c) o[c] = madd<FUSED>(a2[c], w2, madd<FUSED>(a1[c], w1, a0[c] * w0));
  }
  return ok;
}

template <bool FUSED, typename T>
void interpolate_images(const T* attr, const int64_t* ids, const float* bary, const int64_t* tris, int64_t n_faces,
                        int64_t n_vertices, int64_t channels, int64_t height, int64_t width, int64_t batch, T* out,
                        std::atomic<bool>& bad_id) {
  const int64_t n_pixels = height * width;
  for_each_task(batch, height, bands_for(batch, height), [] { return 0; }, [&](int, int64_t b, int64_t lo, int64_t hi) {
    const T* a = attr + b * n_vertices * channels;
    const int64_t begin = b * n_pixels + lo * width, end = b * n_pixels + hi * width;
    const bool ok = channels == 3
                        ? interpolate_pixels<FUSED, T, 3>(a, ids, bary, tris, n_faces, channels, begin, end, out)
                        : interpolate_pixels<FUSED, T, 0>(a, ids, bary, tris, n_faces, channels, begin, end, out);
    if (!ok) bad_id = true;
  });
}

// (B, V, C) attributes -> (B, H, W, C) values: fma(a2, w2, fma(a1, w1, a0 * w0)) as the torch path.
at::Tensor interpolate(const at::Tensor& attributes, const at::Tensor& triangle_id, const at::Tensor& barycentric,
                       const at::Tensor& triangles, bool fused) {
  TORCH_CHECK(attributes.device().is_cpu() && attributes.dim() == 3 && attributes.is_contiguous(),
              "attributes must be contiguous (B, V, C) on the CPU");
  const int64_t batch = attributes.size(0), n_vertices = attributes.size(1), channels = attributes.size(2);
  check_fragments(triangle_id, barycentric, batch);
  check_triangles(triangles, n_vertices);
  const int64_t height = triangle_id.size(1), width = triangle_id.size(2);
  at::Tensor out = at::empty({batch, height, width, channels}, attributes.options());
  std::atomic<bool> bad_id{false};
  AT_DISPATCH_FLOATING_TYPES(attributes.scalar_type(), "ifn_interpolate", [&] {
    auto run = fused ? interpolate_images<true, scalar_t> : interpolate_images<false, scalar_t>;
    run(attributes.const_data_ptr<scalar_t>(), triangle_id.const_data_ptr<int64_t>(),
        barycentric.const_data_ptr<float>(), triangles.const_data_ptr<int64_t>(), triangles.size(0), n_vertices,
        channels, height, width, batch, out.mutable_data_ptr<scalar_t>(), bad_id);
  });
  TORCH_CHECK(!bad_id.load(), "triangle_id holds ids >= the number of triangles (", triangles.size(0), ")");
  return out;
}

// One image's (V, C) attribute gradient from its (H, W, C) value gradient (strides sh, sw,
// sc). NC as in interpolate_pixels.
template <typename T, int NC>
void backward_image(const T* __restrict g_img, int64_t sh, int64_t sw, int64_t sc, const int64_t* __restrict ids,
                    const float* __restrict bary, const int64_t* __restrict tris, int64_t n_faces, int64_t channels,
                    int64_t height, int64_t width, int64_t n_vertices, T* __restrict g_attr) {
  const int64_t nc = NC > 0 ? NC : channels;
  std::fill(g_attr, g_attr + n_vertices * nc, T(0));  // zeroed here: no extra parallel pass
  for (int64_t i = 0; i < height; ++i) {
    for (int64_t j = 0; j < width; ++j) {
      const int64_t p = i * width + j;
      const int64_t id = ids[p];
      if (id < 0 || id >= n_faces) continue;
      const T* g = g_img + i * sh + j * sw;
      T gc[NC > 0 ? NC : 1];
      if constexpr (NC > 0) {
        for (int c = 0; c < NC; ++c) gc[c] = g[c * sc];
      }
      for (int k = 0; k < 3; ++k) {
        const T w = static_cast<T>(bary[3 * p + k]);
        T* dst = g_attr + tris[3 * id + k] * nc;
        if constexpr (NC > 0) {
          for (int c = 0; c < NC; ++c) dst[c] += w * gc[c];
        } else {
          for (int64_t c = 0; c < nc; ++c) dst[c] += w * g[c * sc];
        }
      }
    }
  }
}

template <typename T>
void interpolate_backward_images(const T* grad, const int64_t* grad_strides, const int64_t* ids, const float* bary,
                                 const int64_t* tris, int64_t n_faces, int64_t n_vertices, int64_t channels,
                                 int64_t height, int64_t width, int64_t batch, T* out) {
  // The gradient is read through its strides (usually those of an NCHW tensor), so no
  // layout copy is made. Whole images only: each task owns its image's slice of the
  // (B, V, C) gradient (bands of one image would add into the same vertices), so no atomics.
  const int64_t sb = grad_strides[0], sh = grad_strides[1], sw = grad_strides[2], sc = grad_strides[3];
  const int64_t n_pixels = height * width;
  for_each_task(batch, height, 1, [] { return 0; }, [&](int, int64_t b, int64_t, int64_t) {
    const auto run = channels == 3 ? backward_image<T, 3> : backward_image<T, 0>;
    run(grad + b * sb, sh, sw, sc, ids + b * n_pixels, bary + 3 * b * n_pixels, tris, n_faces, channels, height,
        width, n_vertices, out + b * n_vertices * channels);
  });
}

// (B, H, W, C) gradient of the values (any strides) -> (B, V, C) gradient of the attributes.
at::Tensor interpolate_backward(const at::Tensor& grad, const at::Tensor& triangle_id, const at::Tensor& barycentric,
                                const at::Tensor& triangles, int64_t n_vertices) {
  TORCH_CHECK(grad.device().is_cpu() && grad.dim() == 4, "grad must be (B, H, W, C) on the CPU");
  const int64_t batch = grad.size(0), channels = grad.size(3);
  check_fragments(triangle_id, barycentric, batch);
  TORCH_CHECK(grad.size(1) == triangle_id.size(1) && grad.size(2) == triangle_id.size(2),
              "grad and triangle_id sizes differ");
  check_triangles(triangles, n_vertices);
  at::Tensor out = at::empty({batch, n_vertices, channels}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "ifn_interpolate_backward", [&] {
    interpolate_backward_images<scalar_t>(grad.const_data_ptr<scalar_t>(), grad.strides().data(),
                                          triangle_id.const_data_ptr<int64_t>(), barycentric.const_data_ptr<float>(),
                                          triangles.const_data_ptr<int64_t>(), triangles.size(0), n_vertices,
                                          channels, triangle_id.size(1), triangle_id.size(2), batch,
                                          out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(ifn_raster, m) {
  m.def("rasterize(Tensor vertices, Tensor triangles, int height, int width, bool fused) -> (Tensor, Tensor)",
        &rasterize);
  m.def("interpolate(Tensor attributes, Tensor triangle_id, Tensor barycentric, Tensor triangles, bool fused) -> Tensor",
        &interpolate);
  m.def(
      "interpolate_backward(Tensor grad, Tensor triangle_id, Tensor barycentric, Tensor triangles, int n_vertices) "
      "-> Tensor",
      &interpolate_backward);
}
