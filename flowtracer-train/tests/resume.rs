//! Resume after a checkpoint equals an uninterrupted run.

use burn::tensor::Device;
use flowtracer_core::baselines::CreditMethod;
use flowtracer_train::checkpoint;
use flowtracer_train::model::param_values;

use crate::common::{model_config, temp_dir, trainer};

#[test]
fn resume_after_checkpoint_equals_uninterrupted_run() {
    let mut straight = trainer(CreditMethod::FlowTracer);
    let mut m_straight = Vec::new();
    for _ in 0..4 {
        m_straight.push(straight.train_step().unwrap());
    }

    let dir = temp_dir("resume");
    let mut first = trainer(CreditMethod::FlowTracer);
    first.train_step().unwrap();
    first.train_step().unwrap();
    checkpoint::save(&first, &model_config(), &Default::default(), &dir).unwrap();
    drop(first);
    let path = checkpoint::latest(&dir).expect("a checkpoint");
    let (mut resumed, _) = checkpoint::load(&path, Default::default(), Device::flex()).unwrap();
    assert_eq!(resumed.step, 2);
    let m3 = resumed.train_step().unwrap();
    let m4 = resumed.train_step().unwrap();

    assert_eq!(m3.reward_mean, m_straight[2].reward_mean);
    assert_eq!(m4.loss, m_straight[3].loss);
    assert_eq!(param_values(&resumed.model), param_values(&straight.model));
    assert_eq!(resumed.rng, straight.rng);
    let _ = std::fs::remove_dir_all(&dir);
}
