# grad_input of a strided layer on the direct kernel (textually included in conv.pyx).
#
# Design notes
# - With stride S, input row ih takes its kernel rows from one residue class only:
#   kh = a + j*SH with a = (ih + PH) mod SH, from output row oh = q - j where
#   q = (ih + PH - a) / SH. So the rows (and likewise the columns) of grad_input split into
#   SH x SW "phases" (a, b), and each phase is a stride-1 convolution of grad_output by a
#   sub-kernel of ceil((KH - a) / SH) x ceil((KW - b) / SW) taps, flipped, with channels
#   and filters swapped: a forward the direct kernel computes (direct_forward, its weights
#   packed straight from the layer's through a Rotation of offsets), into a buffer of the
#   phase's cells, q by r. One pass per (sample, channel) plane then places every phase's
#   cells into grad_input, the plane staying in cache meanwhile.
# - Why: im2col + GEMM computes a strided grad_input as a product into a column matrix of
#   K x L per sample (ResNet's 3x3 downsampling at 56x56: 1.8 MB a sample), then folds it
#   back (col2im); this computes each cell once, at the direct kernel's rate.
# - Which layers: float32, groups 1, dilation 1, a stride above 1 no larger than the kernel
#   (so every phase has taps), a padding every phase can start from, and phases the
#   direct forward takes (strided_input_grad_applies).
# - Each cell is one in-order sum, computed by one thread: bit-identical for any thread
#   count, like every other direct pass.

# Strides above 4 on either axis keep im2col + GEMM (at most 16 phases).
cdef Py_ssize_t MAX_PHASE_STRIDE = 4


cdef struct Phase:
    Geometry g                  # the phase's forward: grad_output in, its cells out
    Py_ssize_t first_h, first_w # grad_input's row and column of its first cell


cdef bint phase_of(const Geometry* g, Py_ssize_t a, Py_ssize_t b, Phase* phase) noexcept:
    """phase[0] for residues (a, b) of layer g; False where the phase's forward would need
    a negative padding (a padding wider than the kernel's reach) or it has no cells."""
    cdef Py_ssize_t JH = (g.KH - a + g.SH - 1) // g.SH, JW = (g.KW - b + g.SW - 1) // g.SW
    cdef Py_ssize_t q_first = (g.PH - a + g.SH - 1) // g.SH
    cdef Py_ssize_t r_first = (g.PW - b + g.SW - 1) // g.SW
    # The last row and column of the phase, counted from the padded top and left.
    cdef Py_ssize_t last_h = g.H - 1 - a + g.PH, last_w = g.W - 1 - b + g.PW
    cdef Geometry t = g[0]
    if last_h < 0 or last_w < 0:
        return False
    t.C, t.H, t.W = g.F, g.OH, g.OW
    t.F, t.KH, t.KW = g.C, JH, JW
    t.OH = last_h // g.SH - q_first + 1
    t.OW = last_w // g.SW - r_first + 1
    t.SH = t.SW = 1
    t.PH, t.PW = JH - 1 - q_first, JW - 1 - r_first
    phase.g = t
    phase.first_h = q_first * g.SH + a - g.PH
    phase.first_w = r_first * g.SW + b - g.PW
    return t.PH >= 0 and t.PW >= 0 and t.OH > 0 and t.OW > 0


cdef bint strided_input_grad_applies(const Geometry* g, object dtype):
    """A strided layer whose every phase the direct forward takes (see the notes)."""
    cdef Phase phase
    cdef Py_ssize_t a, b
    if (g.SH == 1 and g.SW == 1) or g.SH > MAX_PHASE_STRIDE or g.SW > MAX_PHASE_STRIDE:
        return False
    if g.G != 1 or g.DH != 1 or g.DW != 1 or g.KH < g.SH or g.KW < g.SW:
        return False
    if not (direct_enabled and dtype == np.float32 and fills_tiles(g.C)):
        return False
    for a in range(g.SH):
        for b in range(g.SW):
            if not phase_of(g, a, b, &phase) or not direct_allowed(&phase.g, dtype):
                return False
            if phase.g.C * phase.g.KH * phase.g.KW < MIN_DIRECT_TAPS:
                return False
    return True


cdef extern from "microkernel.h" nogil:
    void cnncli_interleave2(const float* even, const float* odd, float* out, Py_ssize_t pairs)


cdef void place_phases(float* grad_input, float** cells, const Phase* phases,
                       const Geometry* g, int n_threads) noexcept nogil:
    """grad_input[n, c, first_h + q*SH, first_w + r*SW] = cells of each phase [n, c, q, r],
    phases listed row residue by row residue (SW to a residue, sharing their rows). With
    stride 2 across, each row is its two phases' rows interleaved (cnncli_interleave2)."""
    cdef Py_ssize_t plane, a, b, i, q, r, even, odd
    cdef float* target
    for plane in prange(g.N * g.C, schedule="static", num_threads=n_threads):
        for a in range(g.SH):
            i = a * g.SW
            for q in range(phases[i].g.OH):
                target = grad_input + (plane * g.H + phases[i].first_h + q * g.SH) * g.W
                if g.SW == 2:
                    even = i if phases[i].first_w == 0 else i + 1
                    odd = 2 * i + 1 - even
                    cnncli_interleave2(cells[even] + (plane * phases[even].g.OH + q)
                                       * phases[even].g.OW,
                                       cells[odd] + (plane * phases[odd].g.OH + q)
                                       * phases[odd].g.OW, target, g.W // 2)
                    if g.W % 2:
                        target[g.W - 1] = cells[even][(plane * phases[even].g.OH + q)
                                                      * phases[even].g.OW + g.W // 2]
                    continue
                for b in range(i, i + g.SW):
                    for r in range(phases[b].g.OW):
                        target[phases[b].first_w + r * g.SW] = cells[b][
                            (plane * phases[b].g.OH + q) * phases[b].g.OW + r]


cdef strided_input_grad(grad_output, weight, grad_input, Geometry g, int n_threads):
    """grad_input of a strided layer, phase by phase on the direct kernel (see the notes)."""
    cdef Phase phases[16]
    cdef float* cells[16]
    cdef Py_ssize_t count = 0, a, b, j, l, JH, JW
    cdef int[::1] offsets
    cdef float[:, :, :, ::1] buffer
    cdef Rotation rotation
    cdef float[:, :, :, ::1] target = grad_input
    keep = []
    for a in range(g.SH):
        for b in range(g.SW):
            phase_of(&g, a, b, &phases[count])
            JH, JW = phases[count].g.KH, phases[count].g.KW
            # Sub-kernel tap (j, l) is the layer's (a + (JH-1-j)*SH, b + (JW-1-l)*SW).
            offsets = np.array([(a + (JH - 1 - j) * g.SH) * g.KW + b + (JW - 1 - l) * g.SW
                                for j in range(JH) for l in range(JW)], dtype=np.int32)
            rotation = Rotation(g.C, g.KH * g.KW, JH * JW, &offsets[0])
            array = np.empty((g.N, g.C, phases[count].g.OH, phases[count].g.OW),
                             dtype=np.float32)
            direct_forward(grad_output, weight, None, None, array, phases[count].g, False,
                           n_threads, &rotation)
            keep.append(array)
            buffer = array
            cells[count] = &buffer[0, 0, 0, 0]
            count += 1
    with nogil:
        place_phases(&target[0, 0, 0, 0], cells, phases, &g, n_threads)
