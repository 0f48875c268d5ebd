//! AdamW with decoupled weight decay (Loshchilov & Hutter), kept here rather than taken from
//! candle-nn so that its moment estimates can be checkpointed and restored exactly, so that
//! norms and biases are excluded from weight decay, and so that the update is one fused pass
//! on the CPU.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::host::{self, FusedAdamW, Hyper};

/// Optimiser settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The moment estimates of one parameter: plain buffers updated in place by the fused host
/// kernel, or tensors updated by composed ops on other devices.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Tensors { m: Tensor, v: Tensor },
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// AdamW over named variables.
pub struct AdamW {
    slots: Vec<Slot>,
    params: AdamWParams,
    step: u64,
}

/// Whether a parameter is decayed: matrices and embeddings are, norms and biases are not.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm"))
}

impl AdamW {
    /// Optimises `vars` (name → variable), in name order. `f32` variables on the CPU take the
    /// fused host path; the others the composed one.
    pub fn new(vars: &HashMap<String, Var>, params: AdamWParams) -> candle_core::Result<Self> {
        Self::build(vars, params, true)
    }

    fn build(
        vars: &HashMap<String, Var>,
        params: AdamWParams,
        fused: bool,
    ) -> candle_core::Result<Self> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let slots = names
            .into_iter()
            .map(|n| {
                let var = vars[n].clone();
                let moments = if fused && host::on_host(var.as_tensor()) {
                    let len = var.elem_count();
                    Moments::Host {
                        m: vec![0.0; len],
                        v: vec![0.0; len],
                    }
                } else {
                    let z = var.as_tensor().zeros_like()?;
                    Moments::Tensors { m: z.clone(), v: z }
                };
                Ok(Slot {
                    name: n.clone(),
                    decay: decays(n),
                    moments,
                    var,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            slots,
            params,
            step: 0,
        })
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// One update with learning rate `lr` from gradients by variable name; variables without a
    /// gradient are left as they are.
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> candle_core::Result<()> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`AdamW::step`] with every gradient multiplied by `grad_scale` first (the clipping
    /// factor of [`super::clip_factor`]), without materialising the scaled gradients.
    pub fn step_scaled(
        &mut self,
        grads: &HashMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> candle_core::Result<()> {
        self.step += 1;
        let p = &self.params;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(&s.name) else {
                continue;
            };
            let shrink = if s.decay && p.weight_decay > 0.0 {
                1.0 - lr * p.weight_decay
            } else {
                1.0
            };
            match &mut s.moments {
                Moments::Host { m, v } if host::on_host(g) && s.var.is_contiguous() => {
                    let g = g.contiguous()?;
                    let op = FusedAdamW {
                        moments: RefCell::new((&mut m[..], &mut v[..])),
                        hyper: Hyper {
                            lr: lr as f32,
                            beta1: p.beta1 as f32,
                            beta2: p.beta2 as f32,
                            bc1: bc1 as f32,
                            bc2: bc2 as f32,
                            eps: p.eps as f32,
                            shrink: shrink as f32,
                            grad_scale: grad_scale as f32,
                        },
                    };
                    s.var.as_tensor().inplace_op2(&g, &op)?;
                }
                Moments::Host { .. } => candle_core::bail!(
                    "AdamW: `{}` has a host buffer but a {:?} gradient on {:?}",
                    s.name,
                    g.dtype(),
                    g.device()
                ),
                Moments::Tensors { m, v } => {
                    let g = g.to_dtype(DType::F32)?;
                    let g = if grad_scale != 1.0 {
                        (g * grad_scale)?
                    } else {
                        g
                    };
                    *m = ((&*m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
                    *v = ((&*v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
                    let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + p.eps)?)?;
                    let w = s.var.as_tensor();
                    let w = if shrink != 1.0 {
                        (w * shrink)?
                    } else {
                        w.clone()
                    };
                    s.var.set(&(w - (update * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// The moment estimates of slot `s` as tensors shaped like its variable.
    fn moment_tensors(s: &Slot) -> candle_core::Result<(Tensor, Tensor)> {
        match &s.moments {
            Moments::Host { m, v } => {
                let shape = s.var.shape();
                Ok((
                    Tensor::from_slice(m, shape, &Device::Cpu)?,
                    Tensor::from_slice(v, shape, &Device::Cpu)?,
                ))
            }
            Moments::Tensors { m, v } => Ok((m.clone(), v.clone())),
        }
    }

    /// Saves the moment estimates (`m.<name>`, `v.<name>`) and the step count.
    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for s in &self.slots {
            let (m, v) = Self::moment_tensors(s)?;
            t.insert(format!("m.{}", s.name), m);
            t.insert(format!("v.{}", s.name), v);
        }
        t.insert(
            "step".into(),
            Tensor::new(&[self.step as f64], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&t, path)?;
        Ok(distill_files::usual_mode(path)?)
    }

    /// Restores what [`AdamW::save`] wrote; every variable must be present with its shape.
    pub fn load(&mut self, path: &Path) -> candle_core::Result<()> {
        let dev = self
            .slots
            .first()
            .map(|s| s.var.device().clone())
            .unwrap_or(Device::Cpu);
        let t = candle_core::safetensors::load(path, &dev)?;
        for s in &mut self.slots {
            let read = |key: &str| -> candle_core::Result<Tensor> {
                let k = format!("{key}.{}", s.name);
                let x = t.get(&k).ok_or_else(|| {
                    candle_core::Error::Msg(format!("{}: no `{k}`", path.display()))
                })?;
                if x.dims() != s.var.dims() {
                    candle_core::bail!(
                        "{}: `{k}` has shape {:?}, expected {:?}",
                        path.display(),
                        x.dims(),
                        s.var.dims()
                    );
                }
                Ok(x.clone())
            };
            let (m, v) = (read("m")?, read("v")?);
            match &mut s.moments {
                Moments::Host { m: hm, v: hv } => {
                    *hm = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    *hv = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                }
                Moments::Tensors { m: tm, v: tv } => {
                    *tm = m;
                    *tv = v;
                }
            }
        }
        let step = t
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `step`", path.display())))?;
        self.step = step.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_matches_the_closed_form_and_norms_are_not_decayed() {
        let dev = Device::Cpu;
        let mut vars = HashMap::new();
        vars.insert("w".to_string(), Var::new(&[1.0f32, -2.0], &dev).unwrap());
        vars.insert(
            "layer.norm.weight".to_string(),
            Var::new(&[1.0f32], &dev).unwrap(),
        );
        let p = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&vars, p).unwrap();
        let mut grads = HashMap::new();
        grads.insert(
            "w".to_string(),
            Tensor::new(&[0.5f32, -0.25], &dev).unwrap(),
        );
        grads.insert(
            "layer.norm.weight".to_string(),
            Tensor::new(&[0.0f32], &dev).unwrap(),
        );
        opt.step(&grads, 0.01).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = sign(g); w ← w(1 − lr·wd) − lr·sign(g).
        let w = vars["w"].as_tensor().to_vec1::<f32>().unwrap();
        assert!((w[0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6, "{w:?}");
        assert!((w[1] - (-2.0 * (1.0 - 0.001) + 0.01)).abs() < 1e-6, "{w:?}");
        assert_eq!(
            vars["layer.norm.weight"]
                .as_tensor()
                .to_vec1::<f32>()
                .unwrap(),
            vec![1.0]
        );
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let mut vars = HashMap::new();
        vars.insert("w".to_string(), Var::new(&[1.0f32, 2.0], &dev).unwrap());
        let p = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut a = AdamW::new(&vars, p.clone()).unwrap();
        let mut g = HashMap::new();
        g.insert("w".to_string(), Tensor::new(&[0.3f32, 0.1], &dev).unwrap());
        a.step(&g, 0.1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        a.save(&dir.path().join("o.safetensors")).unwrap();
        let mut b = AdamW::new(&vars, p).unwrap();
        b.load(&dir.path().join("o.safetensors")).unwrap();
        assert_eq!(b.steps_taken(), 1);
        let (_, va) = AdamW::moment_tensors(&a.slots[0]).unwrap();
        let (_, vb) = AdamW::moment_tensors(&b.slots[0]).unwrap();
        assert_eq!(va.to_vec1::<f32>().unwrap(), vb.to_vec1::<f32>().unwrap());
    }

    /// The fused host path and the composed tensor path agree over several steps with decay,
    /// clipping factor and a parameter without weight decay.
    #[test]
    fn fused_update_matches_the_composed_one() {
        let dev = Device::Cpu;
        let p = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let make = || {
            let mut vars = HashMap::new();
            let w = Tensor::randn(0f32, 1.0, (70, 1000), &dev).unwrap();
            vars.insert("w".to_string(), Var::from_tensor(&w).unwrap());
            vars.insert(
                "norm.weight".to_string(),
                Var::ones(64, DType::F32, &dev).unwrap(),
            );
            vars
        };
        let fa = make();
        let fb: HashMap<String, Var> = fa
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                )
            })
            .collect();
        let mut fused = AdamW::build(&fa, p.clone(), true).unwrap();
        let mut composed = AdamW::build(&fb, p, false).unwrap();
        assert!(matches!(fused.slots[0].moments, Moments::Host { .. }));
        assert!(matches!(composed.slots[0].moments, Moments::Tensors { .. }));
        for step in 0..4 {
            let mut g = HashMap::new();
            g.insert(
                "w".to_string(),
                Tensor::randn(0f32, 1.0, (70, 1000), &dev).unwrap(),
            );
            g.insert(
                "norm.weight".to_string(),
                Tensor::randn(0f32, 1.0, 64, &dev).unwrap(),
            );
            let scale = if step % 2 == 0 { 0.5 } else { 1.0 };
            fused.step_scaled(&g, 1e-2, scale).unwrap();
            composed.step_scaled(&g, 1e-2, scale).unwrap();
        }
        for name in ["w", "norm.weight"] {
            let a = fa[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = fb[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-6, "{name}: max |fused − composed| = {worst}");
        }
        // And the host moments checkpoint like the tensor ones.
        let (mf, vf) = AdamW::moment_tensors(&fused.slots[1]).unwrap();
        let (mc, vc) = AdamW::moment_tensors(&composed.slots[1]).unwrap();
        assert_eq!(mf.dims(), mc.dims());
        let d = (mf - mc)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let e = (vf - vc)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6 && e < 1e-6, "moments differ: {d} {e}");
    }
}
