//! Frames of the snapshot module's four classes, drawn by the rules of
//! `modules/snapshot/model/train.py` (which trained the model on its own draws): one filled
//! circle, square, triangle (apex up) or cross, half extent 25..70 px, at a random place, in a
//! colour at least 80 (mean over channels) from the background's, with ±20 of pixel noise.
//! The random source differs from the script's, so these frames are held out.

/// The classes, in the model's output order (`modules/snapshot/model/labels.txt`).
pub const LABELS: [&str; 4] = ["circle", "square", "triangle", "cross"];

/// Side of a frame, in pixels.
pub const SIDE: usize = 224;

/// A small deterministic random source (xorshift64*).
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    /// Seeded with `seed` (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `low..high`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        let span = u64::try_from(high - low).unwrap_or(1).max(1);
        low + i64::try_from(self.next() % span).unwrap_or(0)
    }
}

/// One interleaved RGB24 frame, `SIDE` x `SIDE`, of class `class` (an index into [`LABELS`]).
pub fn draw(random: &mut Random, class: usize) -> Vec<u8> {
    let (background, foreground) = loop {
        let bg: [i64; 3] = [
            random.range(0, 256),
            random.range(0, 256),
            random.range(0, 256),
        ];
        let fg: [i64; 3] = [
            random.range(0, 256),
            random.range(0, 256),
            random.range(0, 256),
        ];
        let distance: i64 = bg.iter().zip(&fg).map(|(b, f)| (b - f).abs()).sum();
        if distance >= 240 {
            break (bg, fg);
        }
    };
    let side = SIDE as i64;
    let r = random.range(25, 71);
    let cx = random.range(r + 4, side - r - 4);
    let cy = random.range(r + 4, side - r - 4);
    let mut frame = Vec::with_capacity(SIDE * SIDE * 3);
    for y in 0..side {
        for x in 0..side {
            let (dx, dy) = (x - cx, y - cy);
            let inside = match class {
                0 => dx * dx + dy * dy <= r * r,
                1 => dx.abs() <= r && dy.abs() <= r,
                2 => dy >= -r && dy <= r && 2 * r * dx.abs() <= r * (dy + r),
                _ => {
                    let t = r / 3;
                    (dx.abs() <= t && dy.abs() <= r) || (dy.abs() <= t && dx.abs() <= r)
                }
            };
            let colour = if inside { foreground } else { background };
            for channel in colour {
                let value = (channel + random.range(-20, 21)).clamp(0, 255);
                frame.push(u8::try_from(value).unwrap_or(0));
            }
        }
    }
    frame
}
