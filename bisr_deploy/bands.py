"""The 28 CASSI bands of the TSA-Net/KAIST setup that BiSRNet reconstructs (nm, band 0 first)."""

CASSI_WAVELENGTHS_NM = (
    453.3, 457.6, 462.1, 466.8, 471.6, 476.5, 481.6, 486.9, 492.4, 498.0,
    503.9, 509.9, 516.2, 522.7, 529.5, 536.5, 543.8, 551.4, 558.6, 567.5,
    575.3, 584.3, 594.4, 604.2, 614.4, 625.1, 636.3, 648.1,
)
