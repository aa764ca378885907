"""Scan kernels and compiled steps behind the backbones: loop/log scans in torch (`scan`), the numba
CPU scan and step (`numba_scan`, `numba_step`) and the fused Triton GPU scan (`triton_scan`)."""
