"""Pure-PyTorch z-buffered triangle rasterizer (any device, no compiled extension).

Convention:
    * Screen space as in :mod:`ifn.render.rasterizer`: ``(x_px, y_px, depth)``, +y down,
      pixel ``(i, j)`` sampled at its centre ``(j + 0.5, i + 0.5)``; nearer (smaller
      depth) wins.
    * Coverage is exact: x and y are snapped to a 1/256-pixel grid and the three edge
      functions are evaluated in integers. A pixel centre exactly on an edge belongs to
      the triangle for which that edge is a *top* or *left* edge (equivalently, the
      sample is moved by an infinitesimal ``(ε, ε²)``), so triangles sharing an edge or a
      vertex never both cover a centre and never leave a crack. Both windings are drawn
      (no culling); zero-area triangles draw nothing.
    * Depth test: ``1/depth`` is interpolated linearly on the screen (exact for a planar
      triangle under perspective) in float32 and the largest value wins; exact ties (equal
      float32 values) go to the lower triangle id.
    * Barycentrics are perspective-correct, ``b_k' = (b_k / w_k) / Σ_j (b_j / w_j)`` with
      the screen-space weights ``b_k`` of the snapped triangle and the vertex depths
      ``w_k``.
    * Triangles with a vertex at depth ≤ 0 or a non-finite coordinate are not drawn
      (there is no near-plane clipping). x and y are clamped to ±2²¹ pixels.

How it is fast — the whole batch is rasterized in one pass, with no loop over pixels or
triangles:
    1. Each triangle gets the tight bounding box of the pixel centres it may cover.
    2. Triangles are grouped by box size (a few dozen size classes at most) and every
       group is evaluated as a dense ``(gh, gw, n)`` grid with the triangles innermost, so
       each elementwise op runs over long contiguous rows. Edge functions are stepped
       incrementally in int32 (int64 for the rare triangles too large for int32).
    3. One ``scatter_reduce(amax)`` per group over an int64 key — float32 bits of
       ``1/depth`` in the high word, ``F - 1 - triangle id`` in the low word — does the
       depth test and picks the winner per pixel at once.
    4. Barycentrics are computed once per pixel, for the winner only.

Large scratch buffers are kept between calls (about 260 MB for 32 images of 240 x 240
with the ICT face region; :meth:`TorchRasterizer.release_buffers` frees them): on CPU,
allocating and page-faulting fresh ones cost more than the arithmetic. So one instance
must not be used by several threads at once. With the buffers, glibc's
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` settings made no measurable
difference here; nothing depends on them.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from ifn.render.rasterizer import Fragments, Rasterizer, _check_rasterizer_inputs

__all__ = ["TorchRasterizer"]

#: Sub-pixel precision of the snapped vertex positions (1/256 pixel).
SUBPIXEL_BITS = 8
_SUB = 1 << SUBPIXEL_BITS
_HALF = _SUB // 2  # pixel centre offset in sub-pixel units
# |snapped coordinate| ≤ 2^29 keeps every int64 edge-function product below 2^61.
_COORD_LIMIT = float(1 << 29)
# Triangles whose snapped extent exceeds this (36 px) take the int64 path. Below it the
# edge functions over a grid of at most 2 * box + 3 cells per axis stay under
# 4 Dx Dy + 1024 (Dx + Dy) < 2^29, so int32 is exact with room for the padding sentinel.
_INT32_MAX_EXTENT = 9216
_NEG32 = -(1 << 30)
_NEG64 = -(1 << 62)
# Box-size classes per axis: exact for the small boxes of a dense mesh, coarser (ratio
# ≤ 2, which the int32 bound above relies on) for large ones.
_CLASS_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# Merging a group into a larger box is worth it below about this many wasted cells
# (the fixed cost of one more group of kernel launches; tuned on CPU).
_GROUP_OVERHEAD_CELLS = 20_000
# Position of the high and low 32-bit words inside an int64 key viewed as two int32.
_HI, _LO = (1, 0) if sys.byteorder == "little" else (0, 1)


class TorchRasterizer(Rasterizer):
    """Exact, batched, device-agnostic rasterizer in plain PyTorch.

    Fragments carry no gradient: gradients reach colours through
    :func:`ifn.render.rasterizer.interpolate`, which uses the barycentrics as constants.

    Example:
        >>> verts = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]])
        >>> frags = TorchRasterizer().rasterize(verts, torch.tensor([[0, 1, 2]]), (4, 4))
        >>> frags.triangle_id[0]
        tensor([[ 0,  0,  0, -1],
                [ 0,  0, -1, -1],
                [ 0, -1, -1, -1],
                [-1, -1, -1, -1]])
    """

    name = "torch"

    def __init__(self) -> None:
        self._workspace: dict[tuple[str, torch.device], Tensor] = {}

    def release_buffers(self) -> None:
        """Free the scratch buffers kept between calls (they are rebuilt on the next call)."""
        self._workspace.clear()

    def _take(self, tag: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A scratch tensor reused between calls (contents undefined), one per ``tag``."""
        numel = 1
        for size in shape:
            numel *= size
        nbytes = numel * dtype.itemsize
        key = (tag, device)
        buf = self._workspace.get(key)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(nbytes + nbytes // 4 + 4096, dtype=torch.uint8, device=device)
            self._workspace[key] = buf
        # Byte offset 0 of a fresh allocation is aligned for every dtype.
        return buf[:nbytes].view(dtype).view(shape)

    @torch.no_grad()
    def rasterize(self, vertices: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> Fragments:
        """Rasterize a batch of meshes sharing one triangle list.

        Args:
            vertices: ``(B, V, 3)`` screen-space ``(x_px, y_px, depth)``, depth > 0.
            triangles: ``(F, 3)`` integer vertex indices, the same for the whole batch.
            image_size: ``(H, W)``.

        Returns:
            :class:`Fragments` with ``triangle_id`` ``(B, H, W)`` int64 (−1 where empty) and
            perspective-correct ``barycentric`` ``(B, H, W, 3)`` float32 (zero where empty),
            on the device of ``vertices``.

        Raises:
            ValueError: for malformed shapes, a non-integer triangle tensor or indices
                outside ``[0, V)``.
        """
        _check_rasterizer_inputs(vertices, triangles, image_size)
        if triangles.dtype.is_floating_point or triangles.dtype.is_complex or triangles.dtype == torch.bool:
            raise ValueError(f"triangles must be an integer tensor, got {triangles.dtype}")
        batch, n_vertices, _ = vertices.shape
        n_faces = triangles.shape[0]
        height, width = int(image_size[0]), int(image_size[1])
        device = vertices.device
        triangles = triangles.to(device=device, dtype=torch.int64)
        if n_faces:
            lo, hi = torch.aminmax(triangles)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= n_vertices:
                raise ValueError(
                    f"triangle indices must lie in [0, {n_vertices}) for vertices of shape "
                    f"{tuple(vertices.shape)}, got [{lo}, {hi}]"
                )
        if batch * (n_faces + 1) >= 1 << 31:  # ids and table columns are int32 inside
            raise ValueError(
                f"B * (F + 1) must stay below 2**31, got vertices {tuple(vertices.shape)} and "
                f"triangles {tuple(triangles.shape)}"
            )

        triangle_id = torch.empty((batch, height, width), dtype=torch.int64, device=device)
        barycentric = torch.empty((batch, height, width, 3), dtype=torch.float32, device=device)
        setup = None
        if batch and n_faces:
            setup = self._setup(vertices, triangles, height, width)
        if setup is None:
            triangle_id.fill_(-1)
            barycentric.zero_()
            return Fragments(triangle_id, barycentric)
        keys = self._zbuffer(setup, batch * height * width, width, device)
        self._resolve(keys, setup, triangle_id, barycentric)
        return Fragments(triangle_id, barycentric)

    # ------------------------------------------------------------------ stage 1: setup
    def _setup(self, vertices: Tensor, triangles: Tensor, height: int, width: int) -> dict | None:
        """Snap, bound, group and sort the triangles of the whole batch.

        Returns ``None`` when no triangle can cover a pixel centre, otherwise the tables
        used by the later stages, with triangles in group order (see the returned keys).
        """
        batch, n_vertices, _ = vertices.shape
        n_faces = triangles.shape[0]
        n_all = batch * n_faces
        device = vertices.device
        i32, i64, f32 = torch.int32, torch.int64, torch.float32
        take = self._take

        # ---- per vertex: snap once rather than once per corner.
        verts = vertices.detach().reshape(batch * n_vertices, 3).to(f32)
        x, y, w = verts.unbind(1)
        # Cheap common-case test: the sum is finite only if every value is (it may overflow
        # for huge but valid values, which merely takes the careful path).
        all_valid = bool(torch.isfinite(verts.sum()) & (w.amin() > 0))
        if not all_valid:  # rare: sanitize, then drop the triangles touching a bad vertex
            bad_vertex = ~(torch.isfinite(verts).all(1) & (w > 0))
            verts = verts.nan_to_num(0.0, 0.0, 0.0)
            x, y, w = verts.unbind(1)
        snap_x = take("snap_x", (batch * n_vertices,), i32, device)
        snap_y = take("snap_y", (batch * n_vertices,), i32, device)
        scaled = x * _SUB
        snap_x.copy_(scaled.round_().clamp_(-_COORD_LIMIT, _COORD_LIMIT))
        torch.mul(y, _SUB, out=scaled)
        snap_y.copy_(scaled.round_().clamp_(-_COORD_LIMIT, _COORD_LIMIT))
        inv_w = w.reciprocal()

        # ---- per triangle of the batch: tight box of pixel centres and its size class.
        corners = take("corners", (3, n_all), i64, device)
        base = torch.arange(0, batch * n_vertices, n_vertices, device=device).unsqueeze(1)
        cx = take("cx", (3, n_all), i32, device)
        cy = take("cy", (3, n_all), i32, device)
        for k in range(3):
            torch.add(base, triangles[:, k], out=corners[k].view(batch, n_faces))
            torch.index_select(snap_x, 0, corners[k], out=cx[k])
            torch.index_select(snap_y, 0, corners[k], out=cy[k])
        lo_x = torch.minimum(cx[0], cx[1])
        torch.minimum(lo_x, cx[2], out=lo_x)
        hi_x = torch.maximum(cx[0], cx[1])
        torch.maximum(hi_x, cx[2], out=hi_x)
        lo_y = torch.minimum(cy[0], cy[1])
        torch.minimum(lo_y, cy[2], out=lo_y)
        hi_y = torch.maximum(cy[0], cy[1])
        torch.maximum(hi_y, cy[2], out=hi_y)
        wide = torch.maximum(hi_x - lo_x, hi_y - lo_y).gt_(_INT32_MAX_EXTENT)
        # Pixel centres 256 j + 128 within [lo, hi]; >> floors. Boxes are clipped to the image.
        j0 = lo_x.add_(_HALF - 1).bitwise_right_shift_(SUBPIXEL_BITS).clamp_(min=0)
        i0 = lo_y.add_(_HALF - 1).bitwise_right_shift_(SUBPIXEL_BITS).clamp_(min=0)
        box_w = hi_x.sub_(_HALF).bitwise_right_shift_(SUBPIXEL_BITS).clamp_(max=width - 1).sub_(j0).add_(1)
        box_h = hi_y.sub_(_HALF).bitwise_right_shift_(SUBPIXEL_BITS).clamp_(max=height - 1).sub_(i0).add_(1)
        box_w.clamp_(0, width)
        box_h.clamp_(0, height)
        if not all_valid:
            drop = bad_vertex[corners[0]] | bad_vertex[corners[1]] | bad_vertex[corners[2]]
            box_w.masked_fill_(drop, 0)

        sizes_h, sizes_w = _class_sizes(height), _class_sizes(width)
        n_keys = 2 * len(sizes_h) * len(sizes_w)
        lookup = box_h * (2 * (width + 1))
        lookup.add_(box_w, alpha=2).add_(wide)
        class_key = _class_lut(sizes_h, sizes_w, height, width, device).index_select(0, lookup)
        hist = torch.bincount(class_key, minlength=n_keys + 1).tolist()
        if hist[n_keys] == n_all:
            return None
        plan, remap = _plan_groups(hist[:n_keys], sizes_h, sizes_w)
        remap.append(len(plan))  # undrawn triangles sort last
        group_key = torch.tensor(remap, dtype=torch.int16, device=device).index_select(0, class_key)
        # Stable: (image, face) order inside a group keeps the scatter's memory access local.
        order = torch.sort(group_key, stable=True).indices
        counts = [0] * len(plan)
        for index, key_count in zip(remap, hist[:n_keys], strict=False):
            counts[index] += key_count
        n_drawn = sum(counts)
        order = order[:n_drawn]
        n_narrow = sum(c for c, g in zip(counts, plan, strict=False) if not g[2])  # wide groups come last

        # ---- per drawn triangle, in group order. Rows 3, 4 repeat rows 0, 1 so that rows
        # [1:4] and [2:5] are the start and end vertices of the edges opposite 0, 1, 2.
        sx = take("sx", (5, n_drawn), i32, device)
        sy = take("sy", (5, n_drawn), i32, device)
        siw = take("siw", (3, n_drawn), f32, device)
        rows = take("rows", (n_drawn,), i64, device)
        for k in range(3):
            torch.index_select(cx[k], 0, order, out=sx[k])
            torch.index_select(cy[k], 0, order, out=sy[k])
            torch.index_select(corners[k], 0, order, out=rows)
            torch.index_select(inv_w, 0, rows, out=siw[k])
        sx[3:5] = sx[0:2]
        sy[3:5] = sy[0:2]
        s_j0 = j0.index_select(0, order)
        s_i0 = i0.index_select(0, order)

        table32 = take("table32", (3, 3, n_drawn), i32, device)
        edge_f = take("edge_f", (3, 3, n_drawn), f32, device)  # unbiased, as float
        twice_area = take("twice_area", (n_drawn,), f32, device)
        _edge_tables(sx, sy, s_j0, s_i0, table32, edge_f, twice_area)
        table64 = None
        if n_narrow < n_drawn:  # redo the few large triangles exactly in int64
            wide_part = slice(n_narrow, n_drawn)
            table64 = torch.empty((3, 3, n_drawn - n_narrow), dtype=i64, device=device)
            _edge_tables(
                sx[:, wide_part].to(i64),
                sy[:, wide_part].to(i64),
                s_j0[wide_part],
                s_i0[wide_part],
                table64,
                edge_f[:, :, wide_part],
                twice_area[wide_part],
            )
        # 1/w is affine on the screen: 1/w(p) = Σ_k n_k(p) / |2A| · 1/w_k, and so are the
        # unnormalized perspective weights n_k(p) / |2A| · 1/w_k themselves.
        siw.mul_(twice_area.abs_().reciprocal_())
        edge_f.mul_(siw)  # (3 [at origin, ∂j, ∂i], 3 [vertex k], n)
        depth_plane = take("depth_plane", (3, n_drawn), f32, device)
        torch.sum(edge_f, 1, out=depth_plane)

        # Winner lookup: (image, 1 + face) → column of the weight table; slot 0 of each image
        # and column n_drawn (all zeros) serve the empty pixels (id −1), so they need no mask.
        image = torch.div(order, n_faces, rounding_mode="floor")
        slot_lookup = take("slot_lookup", (batch * (n_faces + 1),), i32, device).fill_(n_drawn)
        slot_lookup.scatter_(0, order + image + 1, torch.arange(n_drawn, dtype=i32, device=device))
        # Weights of vertices 1 and 2 as planes about the box origin (vertex 0's follows
        # from the sum), then the origin.
        weight_table = take("weight_table", (8, n_drawn + 1), f32, device)
        weight_table[:, n_drawn] = 0.0
        weight_table[0:3, :n_drawn] = edge_f[:, 1]
        weight_table[3:6, :n_drawn] = edge_f[:, 2]
        weight_table[6, :n_drawn] = s_j0
        weight_table[7, :n_drawn] = s_i0

        low = take("low", (n_drawn,), i32, device)
        torch.sub(order, image * n_faces, out=rows)  # face index
        torch.sub(n_faces - 1, rows, out=low)
        origin_pixel = image.mul_(height).add_(s_i0).mul_(width).add_(s_j0)
        return {
            "plan": plan,
            "counts": counts,
            "n_narrow": n_narrow,
            "table32": table32,
            "table64": table64,
            "depth_plane": depth_plane,
            "low": low,
            "origin_pixel": origin_pixel,
            "box_w": box_w.index_select(0, order),
            "box_h": box_h.index_select(0, order),
            "weight_table": weight_table,
            "slot_lookup": slot_lookup,
            "n_faces": n_faces,
        }

    # ------------------------------------------------------------------ stage 2: z-buffer
    def _zbuffer(self, setup: dict, n_pixels: int, width: int, device: torch.device) -> Tensor:
        """Depth-test every candidate cell of every group into one int64 key per pixel.

        Returns:
            ``(B*H*W,)`` int64 keys: high word the float32 bits of the winner's 1/depth,
            low word ``F − 1 − id``; ``−2³² + F`` (decoding to id −1) where empty.
        """
        plan, counts = setup["plan"], setup["counts"]
        n_faces = setup["n_faces"]
        max_h = max(g[0] for g in plan)
        max_w = max(g[1] for g in plan)
        max_cells = max(g[0] * g[1] * c for g, c in zip(plan, counts, strict=False))
        # Padded cells may index past the last pixel; they never win, the slack absorbs them.
        zbuf = self._take("zbuf", (n_pixels + max_h * width + max_w,), torch.int64, device)
        zbuf.fill_(n_faces - (1 << 32))
        edge_buf = self._take("edge", (max_cells,), torch.int64, device)
        tmp_buf = self._take("tmp", (max_cells,), torch.int64, device)
        key_buf = self._take("key", (max_cells,), torch.int64, device)
        pix_buf = self._take("pix", (max_cells,), torch.int64, device)
        steps = torch.arange(max(max_h, max_w), device=device)
        steps_as = {torch.int64: steps, torch.int32: steps.to(torch.int32), torch.float32: steps.float()}
        depth_plane, low, origin_pixel = setup["depth_plane"], setup["low"], setup["origin_pixel"]
        box_w, box_h = setup["box_w"], setup["box_h"]
        n_narrow = setup["n_narrow"]

        start = 0
        for (grid_h, grid_w, is_wide, pad_h, pad_w), count in zip(plan, counts, strict=False):
            sl = slice(start, start + count)
            start += count
            cells = grid_h * grid_w * count
            shape = (grid_h, grid_w, count)
            if is_wide:
                dtype, neg, sign_shift = torch.int64, _NEG64, 63
                tab = setup["table64"][:, :, sl.start - n_narrow : sl.stop - n_narrow]
            else:
                dtype, neg, sign_shift = torch.int32, _NEG32, 31
                tab = setup["table32"][:, :, sl]
            di = steps_as[dtype][:grid_h].unsqueeze(1)  # (gh, 1)
            dj = steps_as[dtype][:grid_w].unsqueeze(1)  # (gw, 1)
            # Edge functions = per-row part (3, gh, n) + per-column part (3, gw, n).
            rows = torch.addcmul(tab[0].unsqueeze(1), tab[2].unsqueeze(1), di)
            cols = tab[1].unsqueeze(1) * dj
            # Cells outside a smaller member's own box get a large negative edge value.
            if pad_h:
                rows[0].masked_fill_(di >= box_h[sl], neg)
            if pad_w:
                cols[0].masked_fill_(dj >= box_w[sl], neg)
            edge = edge_buf.view(dtype)[:cells].view(shape)
            tmp = tmp_buf.view(dtype)[:cells].view(shape)
            torch.add(rows[0].unsqueeze(1), cols[0].unsqueeze(0), out=edge)
            for k in (1, 2):
                torch.add(rows[k].unsqueeze(1), cols[k].unsqueeze(0), out=tmp)
                edge.bitwise_or_(tmp)
            edge.bitwise_right_shift_(sign_shift)  # 0 where all three are ≥ 0, −1 elsewhere
            if is_wide:
                edge = edge.to(torch.int32)

            # High word: float32 bits of 1/depth (ordered like the values, as they are
            # positive), or −1 where uncovered (never wins). Low word: F − 1 − id, so that
            # amax prefers the nearer triangle, then the lower id.
            key = key_buf[:cells].view(shape)
            words = key.view(torch.int32).view(*shape, 2)
            plane = depth_plane[:, sl]
            fsteps = steps_as[torch.float32]
            z_row = torch.addcmul(plane[0], plane[2], fsteps[:grid_h].unsqueeze(1))  # (gh, n)
            z_col = plane[1] * fsteps[:grid_w].unsqueeze(1)  # (gw, n)
            high = words[..., _HI]
            torch.add(z_row.unsqueeze(1), z_col.unsqueeze(0), out=high.view(torch.float32))
            high.bitwise_or_(edge)
            words[..., _LO].copy_(low[sl].expand(shape))

            p_row = origin_pixel[sl] + steps[:grid_h].unsqueeze(1) * width  # (gh, n)
            pix = pix_buf[:cells].view(shape)
            torch.add(p_row.unsqueeze(1), steps[:grid_w].view(1, grid_w, 1), out=pix)
            zbuf.scatter_reduce_(0, pix.view(-1), key.view(-1), "amax")
        return zbuf[:n_pixels]

    # ------------------------------------------------------------------ stage 3: resolve
    def _resolve(self, keys: Tensor, setup: dict, triangle_id: Tensor, barycentric: Tensor) -> None:
        """Decode the winners and fill ``triangle_id`` and ``barycentric`` in place."""
        batch, height, width = triangle_id.shape
        n_pixels = keys.numel()
        n_faces = setup["n_faces"]
        device = keys.device
        f32 = torch.float32
        shape = (batch, height, width)
        words = keys.view(torch.int32).view(-1, 2)
        low = words[:, _LO]
        torch.sub(n_faces - 1, low, out=triangle_id.view(-1))
        # Weight-table column of each pixel's winner, via its slot b (F + 1) + 1 + id (slot
        # b (F + 1), whose column is all zeros, for empty pixels).
        slot = self._take("slot", (batch, height * width), torch.int32, device)
        slot_base = torch.arange(n_faces, batch * (n_faces + 1), n_faces + 1, device=device, dtype=torch.int32)
        torch.sub(slot_base.unsqueeze(1), low.view(batch, -1), out=slot)
        column = self._take("column", (n_pixels,), torch.int32, device)
        torch.index_select(setup["slot_lookup"], 0, slot.view(-1), out=column)
        # The high word is the float32 1/depth at the pixel, Σ_k n_k / |2A| / w_k, whose
        # reciprocal normalizes the weights; NaN (empty) → 0.
        inv_total = self._take("inv_total", shape, f32, device)
        torch.reciprocal(words[:, _HI].view(f32).view(shape), out=inv_total).nan_to_num_(0.0, 0.0, 0.0)

        table = setup["weight_table"]
        gathered = self._take("gathered", shape, f32, device)
        d_col = self._take("d_col", shape, f32, device)
        d_row = self._take("d_row", shape, f32, device)
        torch.index_select(table[6], 0, column, out=gathered.view(-1))
        torch.sub(torch.arange(width, device=device, dtype=f32), gathered, out=d_col)
        torch.index_select(table[7], 0, column, out=gathered.view(-1))
        torch.sub(torch.arange(height, device=device, dtype=f32).unsqueeze(1), gathered, out=d_row)
        weights = []
        for k in (1, 2):
            weight = self._take(f"weight{k}", shape, f32, device)
            torch.index_select(table[3 * k - 3], 0, column, out=weight.view(-1))
            torch.index_select(table[3 * k - 2], 0, column, out=gathered.view(-1))
            weight.addcmul_(gathered, d_col)
            torch.index_select(table[3 * k - 1], 0, column, out=gathered.view(-1))
            weight.addcmul_(gathered, d_row).mul_(inv_total)
            weights.append(weight)
        # Vertex 0: 1 − b1 − b2 where covered (sign(inv_total) is 1 there, 0 elsewhere).
        first = torch.sign(inv_total, out=gathered).sub_(weights[0]).sub_(weights[1])
        torch.stack([first, weights[0], weights[1]], dim=-1, out=barycentric)


def _edge_tables(
    sx: Tensor, sy: Tensor, j0: Tensor, i0: Tensor, grid_out: Tensor, float_out: Tensor, area_out: Tensor
) -> None:
    """Oriented integer edge functions of triangles about their box origins.

    Edge k is opposite vertex k, from vertex k+1 to k+2:
    ``n_k(p) = dx (p_y − a_y) − dy (p_x − a_x)``, made positive inside whatever the winding.

    Args:
        sx, sy: ``(5, n)`` snapped corner coordinates, rows ``0, 1, 2, 0, 1``, in the
            integer dtype to compute in (int32 is exact for narrow triangles).
        j0, i0: ``(n,)`` box origin pixel.
        grid_out: ``(3 [E, ∂j, ∂i], 3 [edge], n)`` receives the grid table: steps per pixel
            and E at the origin, biased by the fill rule so that "covered" is ``E ≥ 0``.
        float_out: ``(3, 3, n)`` float32 receives the same, unbiased.
        area_out: ``(n,)`` float32 receives twice the signed area before orientation.
    """
    dtype = sx.dtype
    start_x, start_y, end_x, end_y = sx[1:4], sy[1:4], sx[2:5], sy[2:5]
    at_origin, step_j, step_i = grid_out.unbind(0)
    # Rows of float_out double as int scratch (fresh temporaries of this size cost page
    # faults); the int64 path, rare, allocates.
    same_size = float_out.dtype.itemsize == dtype.itemsize
    scratch = float_out[0].view(dtype) if same_size else torch.empty_like(step_j)
    torch.sub(end_x, start_x, out=step_i)  # dx
    torch.sub(end_y, start_y, out=step_j)  # dy
    torch.sub(i0.to(dtype) * _SUB + _HALF, start_y, out=at_origin).mul_(step_i)
    torch.sub(j0.to(dtype) * _SUB + _HALF, start_x, out=scratch).mul_(step_j)
    at_origin.sub_(scratch)
    twice_area = at_origin.sum(0, dtype=dtype)  # n_0 + n_1 + n_2 = 2A at any point
    area_out.copy_(twice_area)
    # Orientation: a zero-area triangle gets all-zero edge functions, which the biased
    # test (E ≥ 0 with E = 0 − 1 for a non-top-left "edge") never accepts.
    orient = torch.sign(twice_area)
    at_origin.mul_(orient)
    step_j.mul_(orient * -_SUB)  # ∂n/∂j per pixel = −dy
    step_i.mul_(orient * _SUB)  # ∂n/∂i per pixel = dx
    float_out[0].copy_(at_origin)
    # Top-left rule: a centre exactly on an edge is inside iff the inside lies to its right
    # (∂n/∂x > 0) or, for a horizontal edge, below it (∂n/∂y > 0). Steps are multiples of
    # 256, so "step_j + [step_i > 0] > 0" says exactly that. Biased: covered iff E ≥ 0.
    top_left = float_out[2].view(dtype) if same_size else scratch
    torch.add(step_j, step_i > 0, out=top_left).gt_(0)
    at_origin.add_(top_left).sub_(1)
    float_out[1:].copy_(grid_out[1:])


def _class_sizes(limit: int) -> list[int]:
    """Box-size classes for one image axis of ``limit`` pixels (the last one is ``limit``)."""
    sizes = [s for s in _CLASS_SIZES if s < limit]
    if not sizes:
        return [limit]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    sizes.append(limit)
    return sizes


def _class_lut(sizes_h: list[int], sizes_w: list[int], height: int, width: int, device: torch.device) -> Tensor:
    """``lut[(bh * (W + 1) + bw) * 2 + wide]`` = class key, or the sentinel for empty boxes."""
    n_w = len(sizes_w)
    sentinel = 2 * len(sizes_h) * n_w
    cls_h = torch.searchsorted(torch.tensor(sizes_h), torch.arange(height + 1))
    cls_w = torch.searchsorted(torch.tensor(sizes_w), torch.arange(width + 1))
    lut = (cls_h.unsqueeze(1) * n_w + cls_w).mul_(2).unsqueeze(-1) + torch.tensor([0, 1])
    lut[0] = sentinel
    lut[:, 0] = sentinel
    return lut.view(-1).to(device)


def _plan_groups(
    hist: list[int], sizes_h: list[int], sizes_w: list[int]
) -> tuple[list[tuple[int, int, bool, bool, bool]], list[int]]:
    """Choose the grid shapes and assign every box-size class to one of them.

    Args:
        hist: triangle count per class key ``(ch * len(sizes_w) + cw) * 2 + wide``.
        sizes_h, sizes_w: class sizes per axis.

    Returns:
        ``plan``: one ``(grid_h, grid_w, wide, pad_h, pad_w)`` per group, narrow groups
        first (``pad_*``: some member boxes are smaller than the grid, so the extra cells
        must be masked), and ``remap``: the group index of every class key.
    """
    n_cw = len(sizes_w)
    min_h = [1] + [s + 1 for s in sizes_h[:-1]]  # smallest exact size in each class
    min_w = [1] + [s + 1 for s in sizes_w[:-1]]
    groups: dict[tuple[int, int, int], dict] = {}
    for key, count in enumerate(hist):
        if count:
            ch, cw = divmod(key >> 1, n_cw)
            groups[(ch, cw, key & 1)] = {
                "count": count,
                "min_h": min_h[ch],
                "min_w": min_w[cw],
                "members": [key],
            }
    # Merge small groups upward (ascending area) into the existing group that wastes the
    # fewest cells, if that is cheaper than running one more group. Grids stay within
    # 2 * box + 3 cells per axis for every member (the int32 bound relies on it).
    for name in sorted(groups, key=lambda g: (sizes_h[g[0]] * sizes_w[g[1]], g)):
        group = groups[name]
        area = sizes_h[name[0]] * sizes_w[name[1]]
        if group["count"] * area >= _GROUP_OVERHEAD_CELLS:
            continue
        best, best_cost = None, _GROUP_OVERHEAD_CELLS
        for other in groups:
            grid_h, grid_w = sizes_h[other[0]], sizes_w[other[1]]
            if other == name or other[2] != name[2] or grid_h < sizes_h[name[0]] or grid_w < sizes_w[name[1]]:
                continue
            if grid_h > 2 * group["min_h"] + 3 or grid_w > 2 * group["min_w"] + 3:
                continue
            cost = group["count"] * (grid_h * grid_w - area)
            if cost < best_cost:
                best, best_cost = other, cost
        if best is not None:
            target = groups[best]
            target["count"] += group["count"]
            target["min_h"] = min(target["min_h"], group["min_h"])
            target["min_w"] = min(target["min_w"], group["min_w"])
            target["members"].extend(group["members"])
            del groups[name]
    plan = []
    remap = [0] * len(hist)
    for index, name in enumerate(sorted(groups, key=lambda g: (g[2], g[0], g[1]))):
        group = groups[name]
        grid_h, grid_w = sizes_h[name[0]], sizes_w[name[1]]
        plan.append((grid_h, grid_w, bool(name[2]), group["min_h"] < grid_h, group["min_w"] < grid_w))
        for key in group["members"]:
            remap[key] = index
    return plan, remap
