"""Evaluation: rollout metrics (PSNR, SSIM, controllability), plots and reports."""
