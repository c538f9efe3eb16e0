//! Raw I420 pictures and the synthetic camera patterns drawn into them.

use std::f64::consts::PI;

use super::SourceError;

/// A raw picture in I420 (planar YUV 4:2:0, BT.601 limited range): the Y plane, then the U
/// and V planes at half width and height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I420Frame {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl I420Frame {
    /// A black picture of `width` x `height` (both even, non-zero, at most 8192).
    pub fn new(width: u32, height: u32) -> Result<Self, SourceError> {
        if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(SourceError::InvalidConfig(format!(
                "picture size {width}x{height} must be even and non-zero"
            )));
        }
        if width > 8192 || height > 8192 {
            return Err(SourceError::InvalidConfig(format!(
                "picture size {width}x{height} is larger than 8192x8192"
            )));
        }
        let luma = width as usize * height as usize;
        let mut data = vec![16u8; luma + luma / 2];
        data[luma..].fill(128);
        Ok(I420Frame {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The three planes, contiguous (Y, U, V).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The Y (luma) plane, `width` bytes per row.
    pub fn y(&self) -> &[u8] {
        &self.data[..self.luma_len()]
    }

    /// The luma value at pixel (x, y). Panics if the pixel is outside the picture.
    pub fn luma_at(&self, x: u32, y: u32) -> u8 {
        self.data[y as usize * self.width as usize + x as usize]
    }

    /// The picture as packed 8-bit RGB (full range, BT.601), `width * height * 3` bytes, for
    /// still images. Each chroma sample covers its 2x2 block.
    pub fn to_rgb(&self) -> Vec<u8> {
        let (w, h) = (self.width as usize, self.height as usize);
        let luma = self.luma_len();
        let (y_plane, chroma) = self.data.split_at(luma);
        let (u_plane, v_plane) = chroma.split_at(luma / 4);
        let mut out = Vec::with_capacity(luma * 3);
        for row in 0..h {
            for col in 0..w {
                let c = (row / 2) * (w / 2) + col / 2;
                let y = 1.164_383 * (f64::from(y_plane[row * w + col]) - 16.0);
                let u = f64::from(u_plane[c]) - 128.0;
                let v = f64::from(v_plane[c]) - 128.0;
                let r = y + 1.596_027 * v;
                let g = y - 0.391_762 * u - 0.812_968 * v;
                let b = y + 2.017_232 * u;
                out.extend([r, g, b].map(|x| x.round().clamp(0.0, 255.0) as u8));
            }
        }
        out
    }

    /// Fills this picture with `src` shrunk by an integer factor (each pixel the mean of a
    /// `factor` x `factor` block, luma and chroma alike): how a simulcast camera makes its
    /// lower layers from the full picture, in place, without allocating.
    ///
    /// Errors with [`SourceError::InvalidConfig`] unless `src` is exactly `factor` times this
    /// picture's size in both directions.
    pub fn downscale_from(&mut self, src: &I420Frame) -> Result<(), SourceError> {
        let factor = src.width / self.width;
        if factor == 0 || src.width != self.width * factor || src.height != self.height * factor {
            return Err(SourceError::InvalidConfig(format!(
                "cannot shrink a {}x{} picture to {}x{} by an integer factor",
                src.width, src.height, self.width, self.height
            )));
        }
        let (sw, dw, dh) = (
            src.width as usize,
            self.width as usize,
            self.height as usize,
        );
        let (src_luma, src_chroma) = src.data.split_at(src.luma_len());
        let (src_u, src_v) = src_chroma.split_at(src_luma.len() / 4);
        let luma_len = self.luma_len();
        let (dst_luma, dst_chroma) = self.data.split_at_mut(luma_len);
        let (dst_u, dst_v) = dst_chroma.split_at_mut(luma_len / 4);
        let f = factor as usize;
        shrink_plane(src_luma, sw, dst_luma, dw, dh, f);
        shrink_plane(src_u, sw / 2, dst_u, dw / 2, dh / 2, f);
        shrink_plane(src_v, sw / 2, dst_v, dw / 2, dh / 2, f);
        Ok(())
    }

    fn luma_len(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// Sets every pixel from `color(x, y)`, an RGB value for the pixel centre in
    /// normalised coordinates (0..1 across the width, 0..1 down the height). Chroma is taken
    /// from the colour at the top-left pixel of each 2x2 block.
    fn paint(&mut self, color: impl Fn(f64, f64) -> Rgb) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (fw, fh) = (w as f64, h as f64);
        let luma = self.luma_len();
        let (y_plane, chroma) = self.data.split_at_mut(luma);
        let (u_plane, v_plane) = chroma.split_at_mut(luma / 4);
        for row in 0..h {
            let ny = (row as f64 + 0.5) / fh;
            for col in 0..w {
                let nx = (col as f64 + 0.5) / fw;
                let c = color(nx, ny);
                y_plane[row * w + col] = c.luma();
                if row % 2 == 0 && col % 2 == 0 {
                    let (u, v) = c.chroma();
                    let i = (row / 2) * (w / 2) + col / 2;
                    u_plane[i] = u;
                    v_plane[i] = v;
                }
            }
        }
    }

    /// Fills the rectangle [x0, x1) x [y0, y1) (pixels, clipped) with one colour.
    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (w, h) = (i64::from(self.width), i64::from(self.height));
        let (x0, x1) = (x0.clamp(0, w), x1.clamp(0, w));
        let (y0, y1) = (y0.clamp(0, h), y1.clamp(0, h));
        let luma_len = self.luma_len();
        let (y_plane, chroma) = self.data.split_at_mut(luma_len);
        let (u_plane, v_plane) = chroma.split_at_mut(luma_len / 4);
        let lum = c.luma();
        let (u, v) = c.chroma();
        let w = w as usize;
        for row in y0..y1 {
            let row = row as usize;
            y_plane[row * w + x0 as usize..row * w + x1 as usize].fill(lum);
            if row.is_multiple_of(2) {
                for col in (x0..x1).filter(|c| c % 2 == 0) {
                    let i = (row / 2) * (w / 2) + col as usize / 2;
                    u_plane[i] = u;
                    v_plane[i] = v;
                }
            }
        }
    }

    /// Draws `text` (digits, ':' and '.') as seven-segment characters, top-left at (x, y),
    /// each digit `size` pixels high.
    fn draw_text(&mut self, x: i64, y: i64, size: i64, text: &str, c: Rgb) {
        let w = size / 2;
        let t = (size / 10).max(2);
        let mut cx = x;
        for ch in text.chars() {
            let segments: u8 = match ch {
                '0' => 0b011_1111,
                '1' => 0b000_0110,
                '2' => 0b101_1011,
                '3' => 0b100_1111,
                '4' => 0b110_0110,
                '5' => 0b110_1101,
                '6' => 0b111_1101,
                '7' => 0b000_0111,
                '8' => 0b111_1111,
                '9' => 0b110_1111,
                '-' => 0b100_0000,
                ':' => {
                    self.fill_rect(cx, y + size / 4, cx + t, y + size / 4 + t, c);
                    self.fill_rect(cx, y + 3 * size / 4, cx + t, y + 3 * size / 4 + t, c);
                    cx += 3 * t;
                    continue;
                }
                '.' => {
                    self.fill_rect(cx, y + size - t, cx + t, y + size, c);
                    cx += 3 * t;
                    continue;
                }
                _ => {
                    cx += w + 2 * t;
                    continue;
                }
            };
            let half = size / 2;
            // a (top), b (top right), c (bottom right), d (bottom), e, f, g (middle).
            let rects = [
                (cx, y, cx + w, y + t),
                (cx + w - t, y, cx + w, y + half),
                (cx + w - t, y + half, cx + w, y + size),
                (cx, y + size - t, cx + w, y + size),
                (cx, y + half, cx + t, y + size),
                (cx, y, cx + t, y + half),
                (cx, y + half - t / 2, cx + w, y + half + t - t / 2),
            ];
            for (i, r) in rects.iter().enumerate() {
                if segments & (1 << i) != 0 {
                    self.fill_rect(r.0, r.1, r.2, r.3, c);
                }
            }
            cx += w + 2 * t;
        }
    }
}

/// Which synthetic camera to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// The room camera: colour bars, a bouncing ball, a sweeping line, a moving gradient and
    /// a frame counter (motion everywhere, so the encoder has real work).
    RoomCamera,
    /// The device camera: a round otoscope view of an ear canal and eardrum, drifting slowly
    /// as a hand-held scope does, on black.
    Otoscope,
}

impl Pattern {
    /// Draws the picture for frame number `frame` shown at `t` seconds.
    pub fn render(self, frame: u64, t: f64, out: &mut I420Frame) {
        match self {
            Pattern::RoomCamera => room_camera(frame, t, out),
            Pattern::Otoscope => otoscope(frame, t, out),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rgb(f64, f64, f64);

impl Rgb {
    fn luma(self) -> u8 {
        let y = 16.0 + 65.481 * self.0 + 128.553 * self.1 + 24.966 * self.2;
        y.round().clamp(16.0, 235.0) as u8
    }

    fn chroma(self) -> (u8, u8) {
        let u = 128.0 - 37.797 * self.0 - 74.203 * self.1 + 112.0 * self.2;
        let v = 128.0 + 112.0 * self.0 - 93.786 * self.1 - 18.214 * self.2;
        (
            u.round().clamp(16.0, 240.0) as u8,
            v.round().clamp(16.0, 240.0) as u8,
        )
    }

    fn scale(self, k: f64) -> Rgb {
        Rgb(self.0 * k, self.1 * k, self.2 * k)
    }

    fn mix(self, other: Rgb, k: f64) -> Rgb {
        let k = k.clamp(0.0, 1.0);
        Rgb(
            self.0 + (other.0 - self.0) * k,
            self.1 + (other.1 - self.1) * k,
            self.2 + (other.2 - self.2) * k,
        )
    }
}

const BARS: [Rgb; 7] = [
    Rgb(0.75, 0.75, 0.75),
    Rgb(0.75, 0.75, 0.0),
    Rgb(0.0, 0.75, 0.75),
    Rgb(0.0, 0.75, 0.0),
    Rgb(0.75, 0.0, 0.75),
    Rgb(0.75, 0.0, 0.0),
    Rgb(0.0, 0.0, 0.75),
];

fn room_camera(frame: u64, t: f64, out: &mut I420Frame) {
    let aspect = f64::from(out.width()) / f64::from(out.height());
    // Ball: bounces on the lower part, period ~3.1 s horizontally, 1.3 s vertically.
    let bx = 0.08 + 0.84 * triangle(t / 3.1);
    let by = 0.62 + 0.30 * (1.0 - (PI * (t / 1.3).fract()).sin());
    let radius = 0.07;
    let sweep = (t / 4.0).fract();
    let hue_shift = t * 0.1;
    out.paint(|x, y| {
        let dx = (x - bx) * aspect;
        let dy = y - by;
        if dx * dx + dy * dy < radius * radius {
            // Shaded ball.
            let shade = 1.0 - 0.6 * (dx * dx + dy * dy).sqrt() / radius;
            return Rgb(1.0, 0.85, 0.2).scale(shade);
        }
        if (x - sweep).abs() < 0.004 {
            return Rgb(1.0, 1.0, 1.0);
        }
        if y < 0.55 {
            return BARS[((x * 7.0) as usize).min(6)];
        }
        // A slowly moving diagonal gradient below the bars.
        let g = 0.5 + 0.5 * (2.0 * PI * (x * 0.8 + y * 0.6 - hue_shift)).sin();
        Rgb(0.10 + 0.15 * g, 0.12 + 0.10 * (1.0 - g), 0.25 + 0.20 * g)
    });
    let size = i64::from(out.height()) / 9;
    let margin = size / 3;
    let text = format!("{frame:06} {:02}:{:04.1}", (t / 60.0) as u64, t % 60.0);
    let y = i64::from(out.height()) - size - margin;
    out.fill_rect(
        margin / 2,
        y - margin / 2,
        margin + size * text.len() as i64 * 2 / 3,
        y + size + margin / 2,
        Rgb(0.0, 0.0, 0.0),
    );
    out.draw_text(margin, y, size, &text, Rgb(1.0, 1.0, 1.0));
}

fn otoscope(frame: u64, t: f64, out: &mut I420Frame) {
    let aspect = f64::from(out.width()) / f64::from(out.height());
    // The scope's field of view, centred, with a slow hand-held wobble of the scene inside.
    let (cx, cy) = (0.5 * aspect, 0.5);
    let view = 0.46;
    let wx = 0.05 * (2.0 * PI * t / 7.0).sin() + 0.02 * (2.0 * PI * t / 2.3).sin();
    let wy = 0.04 * (2.0 * PI * t / 5.0).cos() + 0.015 * (2.0 * PI * t / 1.7).sin();
    let drum = 0.22;
    let skin = Rgb(0.80, 0.42, 0.36);
    let pearl = Rgb(0.74, 0.71, 0.68);
    let bone = Rgb(0.92, 0.86, 0.70);
    out.paint(|x, y| {
        let px = x * aspect;
        let (dx, dy) = (px - cx, y - cy);
        let r = (dx * dx + dy * dy).sqrt();
        if r > view {
            return Rgb(0.0, 0.0, 0.0);
        }
        // Light falls off towards the edge of the speculum.
        let light = (1.0 - (r / view).powi(3)).max(0.0) * 0.9 + 0.1;
        let (ex, ey) = (dx - wx, dy - wy);
        let er = (ex * ex + ey * ey).sqrt();
        let color = if er < drum {
            // Eardrum: pearly grey, the handle of the malleus from the centre up and a little
            // forward, and the cone of light towards five o'clock.
            let angle = ey.atan2(ex);
            let handle =
                ex.abs() < 0.012 + 0.01 * (-ey / drum).max(0.0) && ey < 0.0 && ey > -0.8 * drum;
            let cone_dir = 0.9; // radians below the horizontal, towards five o'clock
            let cone = er > 0.2 * drum && (angle - cone_dir).abs() < 0.25 - 0.12 * (er / drum);
            let rim = ((er / drum) - 0.85).max(0.0) * 4.0;
            if handle {
                bone
            } else if cone {
                Rgb(1.0, 0.98, 0.95)
            } else {
                pearl.mix(skin, rim)
            }
        } else {
            // Canal wall with a faint texture.
            let tex = 0.06 * ((ex * 90.0).sin() * (ey * 70.0).cos());
            skin.scale(0.85 + tex)
        };
        color.scale(light)
    });
    let size = i64::from(out.height()) / 14;
    out.draw_text(
        size / 2,
        size / 2,
        size,
        &format!("{frame:06}"),
        Rgb(0.6, 0.6, 0.6),
    );
}

/// A triangle wave going 0 → 1 → 0 over each unit of `x`.
fn triangle(x: f64) -> f64 {
    let f = x.fract();
    if f < 0.5 {
        2.0 * f
    } else {
        2.0 - 2.0 * f
    }
}

/// Box-filters one plane: `dst` (`dst_width` x `dst_height`) from `src` (`src_width` wide),
/// each output sample the rounded mean of a `factor` x `factor` block.
fn shrink_plane(
    src: &[u8],
    src_width: usize,
    dst: &mut [u8],
    dst_width: usize,
    dst_height: usize,
    factor: usize,
) {
    let area = (factor * factor) as u32;
    for row in 0..dst_height {
        let out = &mut dst[row * dst_width..(row + 1) * dst_width];
        for (col, sample) in out.iter_mut().enumerate() {
            let mut sum = 0u32;
            for dy in 0..factor {
                let start = (row * factor + dy) * src_width + col * factor;
                sum += src[start..start + factor]
                    .iter()
                    .map(|&p| u32::from(p))
                    .sum::<u32>();
            }
            // The mean of u8 samples fits in a u8.
            *sample = ((sum + area / 2) / area) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_differ_over_time_and_between_patterns() {
        let mut a = I420Frame::new(64, 36).expect("valid size");
        let mut b = a.clone();
        Pattern::RoomCamera.render(0, 0.0, &mut a);
        Pattern::RoomCamera.render(15, 1.0, &mut b);
        assert_ne!(a, b);
        let mut c = a.clone();
        Pattern::Otoscope.render(0, 0.0, &mut c);
        assert_ne!(a, c);
        // The otoscope's corners are black.
        assert_eq!(c.luma_at(63, 35), 16);
    }

    #[test]
    fn downscaling_averages_blocks() {
        let mut full = I420Frame::new(64, 36).expect("valid size");
        Pattern::RoomCamera.render(3, 0.1, &mut full);
        let mut quarter = I420Frame::new(16, 8).expect("valid size");
        assert!(quarter.downscale_from(&full).is_err(), "36 is not 4 x 8");
        let mut wider = I420Frame::new(20, 18).expect("valid size");
        assert!(
            wider.downscale_from(&full).is_err(),
            "not an integer factor"
        );
        let mut half = I420Frame::new(32, 18).expect("valid size");
        half.downscale_from(&full).expect("factor 2");
        let mean = |x: u32, y: u32| {
            let sum: u32 = [(0, 0), (1, 0), (0, 1), (1, 1)]
                .iter()
                .map(|(dx, dy)| u32::from(full.luma_at(2 * x + dx, 2 * y + dy)))
                .sum();
            ((sum + 2) / 4) as u8
        };
        for (x, y) in [(0, 0), (5, 7), (31, 17)] {
            assert_eq!(half.luma_at(x, y), mean(x, y));
        }
        // Chroma too: a grey picture stays grey.
        let grey = I420Frame::new(64, 36).expect("valid size");
        let mut small = I420Frame::new(32, 18).expect("valid size");
        small.downscale_from(&grey).expect("factor 2");
        assert!(small.data()[32 * 18..].iter().all(|&c| c == 128));
    }

    #[test]
    fn odd_sizes_are_refused() {
        assert!(I420Frame::new(63, 36).is_err());
        assert!(I420Frame::new(0, 36).is_err());
    }
}
