"""How frames are resized to I3D's input side; torch-free so configs can name it."""

from __future__ import annotations

from typing import Literal

ResizeMethod = Literal["bilinear", "bicubic", "area"]
