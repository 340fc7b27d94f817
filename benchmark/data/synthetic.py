"""A synthetic laparoscopic-scene generator that writes CholecSeg8K's own layout and quirks.

Why: the benchmark must run end to end offline, and the real reader must be what reads the data, so
the generator writes ``videoXX/videoXX_SSSSS/frame_N_endo.png`` plus watershed and colour masks,
including the real files' quirks (white 1-px border, a few unannotated and stray-coded pixels, some
RGBA masks). Scenes mimic CholecSeg8K's imbalance: liver, fat and abdominal wall large and frequent;
cystic duct, hepatic vein, blood and liver ligament small and rare. Frames of a clip share one scene
seen by a drifting camera, so consecutive frames are correlated as in the real videos. Classes are
told apart by colour *and* texture, with deliberately close pairs (connective tissue / ligament /
cystic duct, liver / blood) so a 64 px model can learn them but not trivially.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.config import SyntheticConfig
from benchmark.data.classes import CHOLECSEG8K
from benchmark.io import atomic_dir

CHOLEC_VIDEOS = (1, 9, 12, 17, 18, 20, 24, 25, 26, 27, 28, 35, 37, 43, 48, 52, 55)
C = {c.name: c.id for c in CHOLECSEG8K.classes}

# Per class: (probability a clip holds it, share of the clip's frames in which it is visible).
PRESENCE = {
    "Abdominal Wall": (0.95, 0.95), "Fat": (1.0, 0.93), "Gastrointestinal Tract": (0.65, 0.85),
    "Gallbladder": (0.9, 0.95), "Grasper": (0.85, 0.88), "Connective Tissue": (0.3, 0.65),
    "L-hook Electrocautery": (0.4, 0.7), "Blood": (0.2, 0.45), "Cystic Duct": (0.14, 0.3),
    "Hepatic Vein": (0.14, 0.35), "Liver Ligament": (0.1, 0.4),
}

# Base colour (RGB) and texture: (fine-noise amplitude, stripe frequency, stripe amplitude, mottling).
TEXTURE = {
    "Black Background": ((12, 10, 10), 4, 0.0, 0, 2),
    "Abdominal Wall": ((192, 122, 118), 10, 0.9, 14, 10),
    "Liver": ((142, 46, 42), 6, 0.0, 0, 26),
    "Gastrointestinal Tract": ((196, 108, 138), 8, 0.35, 22, 14),
    "Fat": ((212, 186, 98), 22, 0.0, 0, 12),
    "Grasper": ((150, 152, 162), 4, 0.0, 0, 6),
    "Connective Tissue": ((214, 192, 176), 10, 1.6, 18, 8),
    "Blood": ((118, 8, 16), 5, 0.0, 0, 12),
    "Cystic Duct": ((226, 212, 160), 6, 0.0, 0, 6),
    "L-hook Electrocautery": ((58, 58, 68), 4, 0.0, 0, 4),
    "Gallbladder": ((148, 158, 108), 8, 0.0, 0, 16),
    "Hepatic Vein": ((72, 40, 96), 5, 0.0, 0, 8),
    "Liver Ligament": ((236, 228, 232), 10, 1.6, 22, 8),
}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR))


def _blob(xx, yy, cx, cy, r, rng_params) -> np.ndarray:
    """Irregular closed region: radius modulated by a few sine harmonics of the angle."""
    amps, phases, aspect, rot = rng_params
    dx, dy = xx - cx, yy - cy
    dxr = dx * np.cos(rot) + dy * np.sin(rot)
    dyr = (-dx * np.sin(rot) + dy * np.cos(rot)) * aspect
    theta = np.arctan2(dyr, dxr)
    rad = r * (1 + sum(a * np.sin((k + 2) * theta + p) for k, (a, p) in enumerate(zip(amps, phases))))
    return np.hypot(dxr, dyr) < rad


def _band(xx, yy, x0, y0, angle, width, bend, length=None) -> np.ndarray:
    """A curved band (duct, ligament, tool shaft) through (x0, y0) along ``angle``."""
    dx, dy = xx - x0, yy - y0
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle) - bend * np.sin(along / 15.0)
    m = np.abs(across) < width / 2
    if length is not None:
        m &= (along > 0) & (along < length)
    return m


class _Clip:
    """One clip's scene: shapes in world coordinates, a camera path, per-class textures."""

    def __init__(self, spec: SyntheticConfig, video: int, clip: int):
        self.spec = spec
        rng = np.random.default_rng([spec.seed, video, clip])
        self.rng = rng
        H, W, n = spec.height, spec.width, spec.frames_per_clip
        self.margin = m = max(8, W // 8)
        self.world = (H + 2 * m, W + 2 * m)
        present = {name: rng.random() < p for name, (p, _) in PRESENCE.items()}
        if present["Liver Ligament"]:  # as in CholecSeg8K: never with grasper or gallbladder
            present["Grasper"] = present["Gallbladder"] = False
        self.windows = {}
        for name, (_, f) in PRESENCE.items():
            if present[name]:
                k = max(1, round(f * n))
                start = int(rng.integers(0, n - k + 1))
                self.windows[name] = (start, start + k)
        self.cam0 = rng.uniform(-m / 2, m / 2, 2)
        self.cam_v = rng.uniform(-m / (2 * n), m / (2 * n), 2)
        self.brightness = rng.uniform(0.85, 1.1)
        self.shape_params = {name: (rng.uniform(0.04, 0.14, 3), rng.uniform(0, 2 * np.pi, 3),
                                    rng.uniform(0.7, 1.4), rng.uniform(0, np.pi)) for name in C}
        wh, ww = self.world
        self.noise = {name: (_smooth_noise(rng, wh, ww, 2), _smooth_noise(rng, wh, ww, 12)) for name in C}
        self.stripe_angle = {name: rng.uniform(0, np.pi) for name in C}
        self.layout = {
            "wall_y": rng.uniform(0.4, 0.6) * H, "liver": (rng.uniform(0.25, 0.5) * W, rng.uniform(0.3, 0.5) * H),
            "gi": (rng.uniform(0.6, 0.85) * W, rng.uniform(0.6, 0.85) * H),
            "gb": (rng.uniform(0.45, 0.7) * W, rng.uniform(0.35, 0.6) * H),
            "ct": (rng.uniform(0.3, 0.7) * W, rng.uniform(0.5, 0.8) * H),
            "duct_angle": rng.uniform(0, np.pi), "lig_angle": rng.uniform(-0.6, 0.6),
            "vein": (rng.uniform(-0.15, 0.15) * W, rng.uniform(-0.1, 0.1) * H),
            "blood": rng.uniform([0.2 * W, 0.3 * H], [0.8 * W, 0.85 * H], (3, 2)),
            "grasper_side": rng.integers(0, 2), "hook_side": rng.integers(0, 2),
        }

    def visible(self, name: str, t: int) -> bool:
        a, b = self.windows.get(name, (0, 0))
        return a <= t < b

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Label map (class ids) and RGB image of frame ``t``."""
        s, L, P = self.spec, self.layout, self.shape_params
        H, W = s.height, s.width
        cam = self.cam0 + self.cam_v * t + 1.5 * np.sin(np.array([t / 5.0, t / 7.0]))
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        wx, wy = xx + cam[0], yy + cam[1]  # world coordinates of the scene (moves with the camera)
        lab = np.full((H, W), C["Fat"], np.uint8)
        if self.visible("Abdominal Wall", t):
            lab[wy < L["wall_y"] + 0.08 * H * np.sin(wx / (0.3 * W))] = C["Abdominal Wall"]
        if self.visible("Gastrointestinal Tract", t):
            lab[_blob(wx, wy, *L["gi"], 0.17 * W, P["Gastrointestinal Tract"])] = C["Gastrointestinal Tract"]
        liver = _blob(wx, wy, *L["liver"], 0.24 * W, P["Liver"])
        lab[liver] = C["Liver"]
        if self.visible("Hepatic Vein", t):
            vx, vy = L["liver"][0] + L["vein"][0], L["liver"][1] + L["vein"][1]
            lab[_band(wx, wy, vx, vy, L["duct_angle"], 0.065 * W, 1.0, 0.2 * W) & liver] = C["Hepatic Vein"]
        if self.visible("Liver Ligament", t):
            lab[_band(wx, wy, 0, L["wall_y"] + 0.15 * H, L["lig_angle"], 0.16 * H, 3.0)] = C["Liver Ligament"]
        if self.visible("Connective Tissue", t):
            lab[_blob(wx, wy, *L["ct"], 0.13 * W, P["Connective Tissue"])] = C["Connective Tissue"]
        if self.visible("Gallbladder", t):
            lab[_blob(wx, wy, *L["gb"], 0.13 * W, P["Gallbladder"])] = C["Gallbladder"]
        if self.visible("Cystic Duct", t):
            gx, gy = L["gb"]
            lab[_band(wx, wy, gx, gy + 0.08 * H, L["duct_angle"], 0.06 * W, 2.0, 0.2 * W)] = C["Cystic Duct"]
        if self.visible("Blood", t):
            for i, (bx, by) in enumerate(L["blood"][: 1 + t % 3]):
                lab[_blob(wx, wy, bx, by, 0.055 * W * (1 + 0.2 * i), P["Blood"])] = C["Blood"]
        # Tools move in screen space (the surgeon's hand), not with the camera.
        if self.visible("Grasper", t):
            side = L["grasper_side"]
            x0 = W - 1 if side else 0
            ang = (np.pi - 0.5 if side else 0.5) + 0.15 * np.sin(t / 4.0)
            length = 0.5 * W + 0.1 * W * np.sin(t / 6.0)
            lab[_band(xx, yy, x0, 0.15 * H, ang, 0.07 * W, 0.0, length)] = C["Grasper"]
            tip = (x0 + length * np.cos(ang), 0.15 * H + length * np.sin(ang))
            lab[np.hypot(xx - tip[0], yy - tip[1]) < 0.05 * W] = C["Grasper"]
        if self.visible("L-hook Electrocautery", t):
            side = L["hook_side"]
            x0 = 0 if side else W - 1
            ang = (0.6 if side else np.pi - 0.6) + 0.1 * np.sin(t / 5.0)
            lab[_band(xx, yy, x0, H - 1, -ang, 0.035 * W, 0.0, 0.45 * W)] = C["L-hook Electrocautery"]
        # Endoscope field of view: everything outside the (slightly cropped) circle is black background.
        fov = ((xx - W / 2) / (0.45 * W)) ** 2 + ((yy - H / 2) / (0.6 * H)) ** 2 > 1.0
        lab[fov] = C["Black Background"]
        return lab, self._paint(lab, wx, wy, xx, yy, t)

    def _paint(self, lab, wx, wy, xx, yy, t) -> np.ndarray:
        s, m = self.spec, self.margin
        H, W = s.height, s.width
        img = np.zeros((H, W, 3), np.float32)
        ox = int(np.clip(round(wx[0, 0]) + m, 0, self.world[1] - W))
        oy = int(np.clip(round(wy[0, 0]) + m, 0, self.world[0] - H))
        for name, cid in C.items():
            sel = lab == cid
            if not sel.any():
                continue
            colour, fine, stripe_f, stripe_a, mottle = TEXTURE[name]
            hi, lo = (n[oy:oy + H, ox:ox + W][sel] for n in self.noise[name])
            v = fine * hi + mottle * lo
            if stripe_a:
                a = self.stripe_angle[name]
                v = v + stripe_a * np.sin(stripe_f * ((wx * np.cos(a) + wy * np.sin(a))[sel]) / 10.0)
            img[sel] = np.asarray(colour, np.float32) + v[:, None]
        # Lighting: the scope's light falls off from the centre; specular glints on wet tissue.
        r2 = ((xx - W / 2) / W) ** 2 + ((yy - H / 2) / H) ** 2
        img *= (self.brightness * (1.05 - 0.9 * r2))[..., None]
        glint = self.noise["Liver"][0][oy:oy + H, ox:ox + W] > 0.93
        img[glint & (lab != C["Black Background"])] = 235
        img += self.rng.normal(0, 3, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def _watershed(lab: np.ndarray, rng: np.random.Generator, quirks: bool) -> np.ndarray:
    lut = np.array([c.watershed for c in CHOLECSEG8K.classes], np.uint8)
    ws = lut[lab]
    if quirks:
        ws[0, :] = ws[-1, :] = ws[:, 0] = ws[:, -1] = 255  # the white 1-px border of the real masks
        if rng.random() < 0.2:  # a small unannotated (0) patch
            y, x = rng.integers(1, ws.shape[0] - 4), rng.integers(1, ws.shape[1] - 4)
            ws[y:y + 3, x:x + 3] = 0
        if rng.random() < 0.03:  # a documented stray code
            ws[1 + rng.integers(0, ws.shape[0] - 2), 1 + rng.integers(0, ws.shape[1] - 2)] = rng.choice([35, 36])
    return ws


def generate(spec: SyntheticConfig, out: Path) -> int:
    """Write the dataset to ``out`` (replaced atomically); returns the number of frames."""
    if not 1 <= spec.videos <= len(CHOLEC_VIDEOS):
        raise ValueError(f"data.synthetic.videos: {spec.videos} is outside 1..{len(CHOLEC_VIDEOS)}")
    pal = CHOLECSEG8K.palette()
    count = 0
    with atomic_dir(out) as tmp:
        for video in CHOLEC_VIDEOS[: spec.videos]:
            for c in range(spec.clips_per_video):
                scene = _Clip(spec, video, c)
                start = 80 * (2 * c + 1)
                clip_dir = tmp / f"video{video:02d}" / f"video{video:02d}_{start:05d}"
                clip_dir.mkdir(parents=True)
                for t in range(spec.frames_per_clip):
                    lab, img = scene.render(t)
                    stem = f"frame_{start + t}_endo"
                    Image.fromarray(img).save(clip_dir / f"{stem}.png")
                    ws = _watershed(lab, scene.rng, spec.quirks)
                    rgb = np.repeat(ws[..., None], 3, axis=2)
                    if spec.quirks and scene.rng.random() < 0.1:  # some real masks carry an all-255 alpha
                        rgb = np.concatenate([rgb, np.full_like(ws[..., None], 255)], axis=2)
                    Image.fromarray(rgb).save(clip_dir / f"{stem}_watershed_mask.png")
                    Image.fromarray(pal[lab]).save(clip_dir / f"{stem}_color_mask.png")
                    count += 1
    return count
