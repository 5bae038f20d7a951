# Row-major GEMM over scipy's BLAS for both float types (textually included).
#
# Called from inside OpenMP loops: the Python caller (cnncli.functional) caps
# every BLAS library at one thread for the duration of the kernel.

from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


cdef inline void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating* a, Py_ssize_t lda,
                      const floating* b, Py_ssize_t ldb, floating beta,
                      floating* c, Py_ssize_t ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C."""
    if m == 1:
        # One output row (a dense layer on one sample): a matrix-vector product.
        # OpenBLAS's GEMM would first copy all of B into its packed layout.
        gemv_row(trans_a, trans_b, n, k, alpha, a, lda, b, ldb, beta, c)
        return
    # Column-major BLAS sees every row-major matrix transposed, so it is asked
    # for C^T = op(B)^T @ op(A)^T: swap the operands, keep the flags.
    cdef char trans_first = b'T' if trans_b else b'N'
    cdef char trans_second = b'T' if trans_a else b'N'
    cdef int rows = <int>n, cols = <int>m, inner = <int>k
    cdef int ld_first = <int>ldb, ld_second = <int>lda, ld_out = <int>ldc
    if floating is float:
        sgemm(&trans_first, &trans_second, &rows, &cols, &inner, &alpha,
              <float*>b, &ld_first, <float*>a, &ld_second, &beta, c, &ld_out)
    else:
        dgemm(&trans_first, &trans_second, &rows, &cols, &inner, &alpha,
              <double*>b, &ld_first, <double*>a, &ld_second, &beta, c, &ld_out)


cdef inline void gemv_row(bint trans_a, bint trans_b, Py_ssize_t n, Py_ssize_t k,
                          floating alpha, const floating* a, Py_ssize_t lda,
                          const floating* b, Py_ssize_t ldb, floating beta,
                          floating* c) noexcept nogil:
    """Row-major c[1, n] = alpha * op(A)[1, k] @ op(B)[k, n] + beta * c, as c = op(B)^T a.

    Column-major BLAS sees B's storage as an (n, k) matrix when B is not
    transposed (then c = that matrix @ a) and as a (k, n) matrix when it is
    (then c = its transpose @ a). A transposed A is a column of stride lda.
    """
    cdef char trans = b'T' if trans_b else b'N'
    cdef int rows = <int>(k if trans_b else n), cols = <int>(n if trans_b else k)
    cdef int ld = <int>ldb, step_a = <int>(lda if trans_a else 1), step_c = 1
    if floating is float:
        sgemv(&trans, &rows, &cols, &alpha, <float*>b, &ld, <float*>a, &step_a, &beta,
              c, &step_c)
    else:
        dgemv(&trans, &rows, &cols, &alpha, <double*>b, &ld, <double*>a, &step_a, &beta,
              c, &step_c)
