//! VP8 encoding and decoding with libvpx (Debian's `libvpx-dev`, through `env-libvpx-sys`).
//!
//! The encoder is set up the way WebRTC senders use it: one pass, constant bitrate, no
//! look-ahead (every input frame gives its output at once), error-resilient, realtime speed,
//! a keyframe at least every [`Vp8Config::keyframe_interval`] frames and whenever asked
//! (after a PLI/FIR).
//!
//! With [`Vp8Config::temporal_layers`] above one, each frame belongs to a temporal layer of a
//! fixed pattern ([`TemporalPattern`]): libvpx shares the bitrate between the layers and the
//! frame's reference flags keep the lower layers decodable without the upper ones. Keyframes
//! then start a pattern period: one asked for mid-period comes at the next period start (at
//! most three frames later).

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_uint, c_ulong};
use std::ptr;

use vpx_sys as vpx;

use super::pattern::I420Frame;
use super::temporal::{TemporalLayer, TemporalPattern, MAX_TEMPORAL_LAYERS};
use super::SourceError;

/// Settings of a [`Vp8Encoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Config {
    /// Frame width in pixels (even).
    pub width: u32,
    /// Frame height in pixels (even).
    pub height: u32,
    /// Frames per second (the encoder's time base is one frame).
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Largest distance between two keyframes, in frames.
    pub keyframe_interval: u32,
    /// Number of VP8 temporal layers (1 to 3; 1: no temporal scalability).
    pub temporal_layers: u8,
}

impl Vp8Config {
    /// 640x360 at `fps`, `bitrate_kbps`, a keyframe every 3 s.
    pub fn new(fps: u32, bitrate_kbps: u32) -> Self {
        Vp8Config {
            width: 640,
            height: 360,
            fps,
            bitrate_kbps,
            keyframe_interval: fps.saturating_mul(3).max(1),
            temporal_layers: 1,
        }
    }

    fn validate(&self) -> Result<(), SourceError> {
        let bad = |reason: String| Err(SourceError::InvalidConfig(reason));
        if self.width == 0
            || self.height == 0
            || !self.width.is_multiple_of(2)
            || !self.height.is_multiple_of(2)
        {
            return bad(format!(
                "VP8 frame size {}x{} must be even and non-zero",
                self.width, self.height
            ));
        }
        if self.width > 4096 || self.height > 4096 {
            return bad(format!(
                "VP8 frame size {}x{} is larger than 4096x4096",
                self.width, self.height
            ));
        }
        if !(1..=120).contains(&self.fps) {
            return bad(format!("frame rate {} is not within 1..=120", self.fps));
        }
        if !(20..=20_000).contains(&self.bitrate_kbps) {
            return bad(format!(
                "video bitrate {} kbit/s is not within 20..=20000",
                self.bitrate_kbps
            ));
        }
        if self.keyframe_interval == 0 {
            return bad("keyframe interval must be at least one frame".into());
        }
        if TemporalPattern::new(self.temporal_layers).is_none() {
            return bad(format!(
                "{} temporal layers is not within 1..={MAX_TEMPORAL_LAYERS}",
                self.temporal_layers
            ));
        }
        Ok(())
    }
}

/// One encoded VP8 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Frame {
    /// The VP8 bitstream of the frame (what goes into RTP after the payload descriptor).
    pub data: Vec<u8>,
    /// Whether this is a keyframe (decodable on its own).
    pub keyframe: bool,
    /// The presentation time stamp, in frames since the encoder started.
    pub pts: i64,
    /// The frame's temporal layer, when the encoder runs more than one.
    pub temporal: Option<TemporalLayer>,
}

/// A libvpx VP8 encoder.
pub struct Vp8Encoder {
    ctx: vpx::vpx_codec_ctx_t,
    cfg: vpx::vpx_codec_enc_cfg_t,
    config: Vp8Config,
    pattern: TemporalPattern,
    /// Frames encoded so far (the position in the temporal pattern).
    encoded: u64,
    /// Frames since the last keyframe.
    since_keyframe: u32,
    /// A keyframe was asked for and waits for the next pattern period.
    keyframe_pending: bool,
}

// SAFETY: the libvpx context is only used through `&mut self`, never from two threads at once;
// libvpx keeps no thread affinity, so moving the context to another thread is sound.
unsafe impl Send for Vp8Encoder {}

impl std::fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Vp8Encoder {
    /// Creates an encoder.
    ///
    /// Errors: [`SourceError::InvalidConfig`] for impossible settings, [`SourceError::Codec`]
    /// if libvpx refuses them.
    pub fn new(config: Vp8Config) -> Result<Self, SourceError> {
        config.validate()?;
        // SAFETY: `vpx_codec_vp8_cx` returns a pointer to a static interface description.
        let iface = unsafe { vpx::vpx_codec_vp8_cx() };
        if iface.is_null() {
            return Err(codec_error(
                "vpx_codec_vp8_cx",
                "no VP8 encoder in libvpx".into(),
            ));
        }
        let mut cfg = MaybeUninit::<vpx::vpx_codec_enc_cfg_t>::zeroed();
        // SAFETY: `cfg` points to writable memory of the right type; libvpx fills it in.
        let err = unsafe { vpx::vpx_codec_enc_config_default(iface, cfg.as_mut_ptr(), 0) };
        check(err, "vpx_codec_enc_config_default", None)?;
        // SAFETY: zeroed is a valid bit pattern for this plain C struct, and libvpx filled it.
        let mut cfg = unsafe { cfg.assume_init() };
        cfg.g_w = config.width;
        cfg.g_h = config.height;
        cfg.g_timebase.num = 1;
        cfg.g_timebase.den = config.fps as c_int;
        cfg.g_threads = 1;
        cfg.g_lag_in_frames = 0;
        cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
        cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
        cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = config.bitrate_kbps;
        cfg.rc_min_quantizer = 2;
        cfg.rc_max_quantizer = 56;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_initial_sz = 500;
        cfg.rc_buf_optimal_sz = 600;
        cfg.rc_buf_sz = 1000;
        // Never drop frames: the sender paces one output per input.
        cfg.rc_dropframe_thresh = 0;
        cfg.rc_resize_allowed = 0;
        cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_AUTO;
        cfg.kf_min_dist = 0;
        cfg.kf_max_dist = config.keyframe_interval;
        // `validate` checked the layer count.
        let pattern = TemporalPattern::new(config.temporal_layers)
            .ok_or_else(|| SourceError::InvalidConfig("temporal layers".into()))?;
        if pattern.layers() > 1 {
            // Keyframes only where this encoder places them (at period starts, always TL0).
            cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_DISABLED;
            cfg.ts_number_layers = c_uint::from(pattern.layers());
            cfg.ts_periodicity = pattern.periodicity() as c_uint;
            for i in 0..pattern.periodicity() {
                cfg.ts_layer_id[i] = c_uint::from(pattern.layer_at(i).tid);
            }
            for (i, d) in pattern.rate_decimators().iter().enumerate() {
                cfg.ts_rate_decimator[i] = *d;
            }
            set_layer_bitrates(&mut cfg, pattern, config.bitrate_kbps);
        }

        let mut ctx = MaybeUninit::<vpx::vpx_codec_ctx_t>::zeroed();
        // SAFETY: `ctx` and `cfg` are valid for the call; the ABI version is the one the
        // bindings were generated for.
        let err = unsafe {
            vpx::vpx_codec_enc_init_ver(
                ctx.as_mut_ptr(),
                iface,
                &cfg,
                0,
                vpx::VPX_ENCODER_ABI_VERSION as c_int,
            )
        };
        check(err, "vpx_codec_enc_init_ver", None)?;
        // SAFETY: the init call succeeded, so libvpx initialised the context.
        let ctx = unsafe { ctx.assume_init() };
        let mut encoder = Vp8Encoder {
            ctx,
            cfg,
            config,
            pattern,
            encoded: 0,
            since_keyframe: 0,
            keyframe_pending: false,
        };
        // Realtime speed; the same settings libwebrtc uses for VP8 at this size.
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED, -6)?;
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY, 0)?;
        encoder.control(vpx::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD, 1)?;
        encoder.control(
            vpx::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT,
            450,
        )?;
        Ok(encoder)
    }

    /// The settings the encoder runs with (the bitrate as last set).
    pub fn config(&self) -> Vp8Config {
        self.config
    }

    /// Changes the target bitrate (kbit/s) from the next frame on.
    pub fn set_bitrate(&mut self, bitrate_kbps: u32) -> Result<(), SourceError> {
        Vp8Config {
            bitrate_kbps,
            ..self.config
        }
        .validate()?;
        self.cfg.rc_target_bitrate = bitrate_kbps;
        if self.pattern.layers() > 1 {
            set_layer_bitrates(&mut self.cfg, self.pattern, bitrate_kbps);
        }
        // SAFETY: `ctx` is an initialised encoder context and `cfg` a valid configuration.
        let err = unsafe { vpx::vpx_codec_enc_config_set(&mut self.ctx, &self.cfg) };
        check(err, "vpx_codec_enc_config_set", Some(&mut self.ctx))?;
        self.config.bitrate_kbps = bitrate_kbps;
        Ok(())
    }

    /// Encodes one frame shown at `pts` (in frames). With `force_keyframe` the output is a
    /// keyframe. Returns the encoded frame, or `None` in the rare case libvpx produced none.
    pub fn encode(
        &mut self,
        frame: &I420Frame,
        pts: i64,
        force_keyframe: bool,
    ) -> Result<Option<Vp8Frame>, SourceError> {
        if frame.width() != self.config.width || frame.height() != self.config.height {
            return Err(SourceError::InvalidConfig(format!(
                "frame of {}x{} given to a {}x{} encoder",
                frame.width(),
                frame.height(),
                self.config.width,
                self.config.height
            )));
        }
        let mut image = MaybeUninit::<vpx::vpx_image_t>::zeroed();
        // SAFETY: the frame's buffer holds a full I420 image of the encoder's size (checked
        // above; `I420Frame` guarantees the buffer length) and outlives the encode call, which
        // only reads it. libvpx does not keep the pointer after `vpx_codec_encode` returns
        // (no look-ahead).
        let wrapped = unsafe {
            vpx::vpx_img_wrap(
                image.as_mut_ptr(),
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                frame.width() as c_uint,
                frame.height() as c_uint,
                1,
                frame.data().as_ptr().cast_mut(),
            )
        };
        if wrapped.is_null() {
            return Err(codec_error("vpx_img_wrap", "cannot wrap the frame".into()));
        }
        let layers = self.pattern.layers();
        let position = (self.encoded % self.pattern.periodicity() as u64) as usize;
        let keyframe = if layers > 1 {
            self.keyframe_pending |=
                force_keyframe || self.since_keyframe >= self.config.keyframe_interval;
            self.keyframe_pending && position == 0
        } else {
            force_keyframe
        };
        let temporal = (layers > 1).then(|| self.pattern.layer_at(position));
        let flags = if keyframe {
            vpx::VPX_EFLAG_FORCE_KF as vpx::vpx_enc_frame_flags_t
        } else if layers > 1 {
            self.pattern.flags_at(position)
        } else {
            0
        };
        if let Some(t) = temporal {
            self.control(
                vpx::vp8e_enc_control_id::VP8E_SET_TEMPORAL_LAYER_ID,
                c_int::from(t.tid),
            )?;
        }
        // SAFETY: `ctx` is initialised; `wrapped` points to the image initialised above.
        let err = unsafe {
            vpx::vpx_codec_encode(
                &mut self.ctx,
                wrapped,
                pts,
                1,
                flags,
                vpx::VPX_DL_REALTIME as c_ulong,
            )
        };
        check(err, "vpx_codec_encode", Some(&mut self.ctx))?;

        let mut out: Option<Vp8Frame> = None;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        loop {
            // SAFETY: `ctx` is initialised; `iter` is the iterator libvpx asks for.
            let pkt = unsafe { vpx::vpx_codec_get_cx_data(&mut self.ctx, &mut iter) };
            if pkt.is_null() {
                break;
            }
            // SAFETY: non-null packets returned by libvpx are valid until the next call.
            let pkt = unsafe { &*pkt };
            if pkt.kind != vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                continue;
            }
            // SAFETY: the packet kind says the `frame` member of the union is the active one,
            // and `buf`/`sz` describe a buffer libvpx owns until the next call.
            let (data, keyframe, pts) = unsafe {
                let f = pkt.data.frame;
                let data = std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize);
                (data, f.flags & vpx::VPX_FRAME_IS_KEY != 0, f.pts)
            };
            match &mut out {
                // VP8 without partitions gives one packet per frame; be tolerant anyway.
                Some(frame) => {
                    frame.data.extend_from_slice(data);
                    frame.keyframe |= keyframe;
                }
                None => {
                    out = Some(Vp8Frame {
                        data: data.to_vec(),
                        keyframe,
                        pts,
                        temporal,
                    })
                }
            }
        }
        self.encoded += 1;
        if out.as_ref().is_some_and(|f| f.keyframe) {
            self.since_keyframe = 0;
            self.keyframe_pending = false;
        } else {
            self.since_keyframe = self.since_keyframe.saturating_add(1);
        }
        Ok(out)
    }

    fn control(&mut self, id: vpx::vp8e_enc_control_id, value: c_int) -> Result<(), SourceError> {
        // SAFETY: `ctx` is an initialised VP8 encoder and these controls take an int.
        let err = unsafe { vpx::vpx_codec_control_(&mut self.ctx, id as c_int, value) };
        check(err, "vpx_codec_control_", Some(&mut self.ctx))
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: the context was initialised in `new` and is destroyed exactly once.
        let err = unsafe { vpx::vpx_codec_destroy(&mut self.ctx) };
        if err != vpx::vpx_codec_err_t::VPX_CODEC_OK {
            tracing::debug!(?err, "vpx_codec_destroy failed");
        }
    }
}

/// A decoded picture's description (the pixels are not kept).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodedPicture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Mean of the luma plane (0–255): a cheap check that the picture is not blank.
    pub mean_luma: f64,
}

/// A libvpx VP8 decoder, used by tests and diagnostics to check a stream decodes.
pub struct Vp8Decoder {
    ctx: vpx::vpx_codec_ctx_t,
}

// SAFETY: as for `Vp8Encoder`: the context is only used through `&mut self`.
unsafe impl Send for Vp8Decoder {}

impl std::fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Decoder").finish_non_exhaustive()
    }
}

impl Vp8Decoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self, SourceError> {
        // SAFETY: returns a pointer to a static interface description.
        let iface = unsafe { vpx::vpx_codec_vp8_dx() };
        if iface.is_null() {
            return Err(codec_error(
                "vpx_codec_vp8_dx",
                "no VP8 decoder in libvpx".into(),
            ));
        }
        let cfg = vpx::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        let mut ctx = MaybeUninit::<vpx::vpx_codec_ctx_t>::zeroed();
        // SAFETY: `ctx` and `cfg` are valid for the call.
        let err = unsafe {
            vpx::vpx_codec_dec_init_ver(
                ctx.as_mut_ptr(),
                iface,
                &cfg,
                0,
                vpx::VPX_DECODER_ABI_VERSION as c_int,
            )
        };
        check(err, "vpx_codec_dec_init_ver", None)?;
        // SAFETY: initialised by the successful call above.
        Ok(Vp8Decoder {
            ctx: unsafe { ctx.assume_init() },
        })
    }

    /// Decodes one frame; returns the picture it produced, if any.
    ///
    /// Errors with [`SourceError::Codec`] when the data is not a decodable VP8 frame (for
    /// example a delta frame before any keyframe).
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<DecodedPicture>, SourceError> {
        let len = c_uint::try_from(data.len()).map_err(|_| {
            SourceError::InvalidConfig(format!("VP8 frame of {} bytes is too large", data.len()))
        })?;
        // SAFETY: `ctx` is an initialised decoder; `data` is valid for `len` bytes.
        let err =
            unsafe { vpx::vpx_codec_decode(&mut self.ctx, data.as_ptr(), len, ptr::null_mut(), 0) };
        check(err, "vpx_codec_decode", Some(&mut self.ctx))?;
        let mut iter: vpx::vpx_codec_iter_t = ptr::null();
        let mut last = None;
        loop {
            // SAFETY: `ctx` is initialised; images stay valid until the next decode call.
            let img = unsafe { vpx::vpx_codec_get_frame(&mut self.ctx, &mut iter) };
            if img.is_null() {
                break;
            }
            // SAFETY: non-null image from libvpx, valid until the next decode call.
            let img = unsafe { &*img };
            let (w, h) = (img.d_w, img.d_h);
            let stride = img.stride[0] as isize;
            let mut sum = 0u64;
            for y in 0..h as isize {
                // SAFETY: plane 0 holds `d_h` rows of `stride` bytes, each with `d_w` pixels.
                let row = unsafe {
                    std::slice::from_raw_parts(img.planes[0].offset(y * stride), w as usize)
                };
                sum += row.iter().map(|&p| u64::from(p)).sum::<u64>();
            }
            let pixels = (u64::from(w) * u64::from(h)).max(1);
            last = Some(DecodedPicture {
                width: w,
                height: h,
                mean_luma: sum as f64 / pixels as f64,
            });
        }
        Ok(last)
    }
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed exactly once.
        let _ = unsafe { vpx::vpx_codec_destroy(&mut self.ctx) };
    }
}

/// Shares `total_kbps` between the temporal layers of `pattern` (cumulative targets).
fn set_layer_bitrates(
    cfg: &mut vpx::vpx_codec_enc_cfg_t,
    pattern: TemporalPattern,
    total_kbps: u32,
) {
    for (i, pct) in pattern.cumulative_percent().iter().enumerate() {
        cfg.ts_target_bitrate[i] = (total_kbps * pct / 100).max(1);
    }
}

fn codec_error(call: &'static str, detail: String) -> SourceError {
    SourceError::Codec {
        codec: "VP8",
        call,
        detail,
    }
}

fn check(
    err: vpx::vpx_codec_err_t,
    call: &'static str,
    ctx: Option<&mut vpx::vpx_codec_ctx_t>,
) -> Result<(), SourceError> {
    if err == vpx::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    let mut detail = format!("{err:?}");
    if let Some(ctx) = ctx {
        // SAFETY: `ctx` is an initialised context; libvpx returns a static or
        // context-owned NUL-terminated string (or null).
        let text = unsafe { vpx::vpx_codec_error_detail(ctx) };
        if !text.is_null() {
            // SAFETY: non-null, NUL-terminated, valid until the next call on `ctx`.
            let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
            detail.push_str(": ");
            detail.push_str(&text);
        }
    }
    Err(codec_error(call, detail))
}
