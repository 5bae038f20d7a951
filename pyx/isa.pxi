# The vector variant the C code of a module runs (isa.h), as CNNCLI_DIRECT_ISA asks
# (textually included in conv.pyx and elementwise.pyx).

import os

cdef extern from "isa.h" nogil:
    enum: CNNCLI_AUTO
    int cnncli_full_rate_512()

# CNNCLI_DIRECT_ISA's values and the variants of isa.h they stand for; an unknown value
# is auto.
ISA_CHOICES = {"auto": CNNCLI_AUTO, "none": 0, "avx2": 1, "avx512": 2}


cdef int wanted_isa():
    """The variant CNNCLI_DIRECT_ISA asks for (CNNCLI_AUTO: the widest the CPU has)."""
    return ISA_CHOICES.get(os.environ.get("CNNCLI_DIRECT_ISA", "auto").lower(), CNNCLI_AUTO)
