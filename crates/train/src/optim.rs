//! AdamW with decoupled weight decay (Loshchilov & Hutter), kept here rather than taken from
//! candle-nn so that its moment estimates can be checkpointed and restored exactly, and so that
//! norms and biases are excluded from weight decay.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

/// Optimiser settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Slot {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
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
    /// Optimises `vars` (name → variable), in name order.
    pub fn new(vars: &HashMap<String, Var>, params: AdamWParams) -> candle_core::Result<Self> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let slots = names
            .into_iter()
            .map(|n| {
                let var = vars[n].clone();
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    name: n.clone(),
                    decay: decays(n),
                    m: z.clone(),
                    v: z,
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
        self.step += 1;
        let p = &self.params;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(&s.name) else {
                continue;
            };
            let g = g.to_dtype(DType::F32)?;
            s.m = ((&s.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            s.v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&s.m / bc1)? / ((&s.v / bc2)?.sqrt()? + p.eps)?)?;
            let w = s.var.as_tensor();
            let w = if s.decay && p.weight_decay > 0.0 {
                (w * (1.0 - lr * p.weight_decay))?
            } else {
                w.clone()
            };
            s.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// Saves the moment estimates (`m.<name>`, `v.<name>`) and the step count.
    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for s in &self.slots {
            t.insert(format!("m.{}", s.name), s.m.clone());
            t.insert(format!("v.{}", s.name), s.v.clone());
        }
        t.insert(
            "step".into(),
            Tensor::new(&[self.step as f64], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&t, path)
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
            for (key, slot) in [("m", &mut s.m), ("v", &mut s.v)] {
                let k = format!("{key}.{}", s.name);
                let x = t.get(&k).ok_or_else(|| {
                    candle_core::Error::Msg(format!("{}: no `{k}`", path.display()))
                })?;
                if x.dims() != slot.dims() {
                    candle_core::bail!(
                        "{}: `{k}` has shape {:?}, expected {:?}",
                        path.display(),
                        x.dims(),
                        slot.dims()
                    );
                }
                *slot = x.clone();
            }
        }
        let step = t
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no `step`", path.display())))?;
        self.step = step.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(
    grads: &mut HashMap<String, Tensor>,
    max_norm: f64,
) -> candle_core::Result<f64> {
    // Summed in name order: a HashMap's order differs between processes, and a float sum in a
    // different order differs in the last bits, which would make runs irreproducible.
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let mut total = 0f64;
    for g in names.into_iter().map(|n| &grads[n]) {
        total += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
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
        assert_eq!(
            a.slots[0].v.to_vec1::<f32>().unwrap(),
            b.slots[0].v.to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let dev = Device::Cpu;
        let mut g = HashMap::new();
        g.insert("a".to_string(), Tensor::new(&[3.0f32], &dev).unwrap());
        g.insert("b".to_string(), Tensor::new(&[4.0f32], &dev).unwrap());
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let a = g["a"].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5);
    }
}
