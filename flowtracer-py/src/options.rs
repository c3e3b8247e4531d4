//! Options: the core's names, the core's defaults, the core's parsers.

use flowtracer_core::aggregate::LayerSelection;
use flowtracer_core::backbone::BackboneConfig;
use flowtracer_core::grpo::ScaleRewards;
use flowtracer_core::qk::QkConfig;
use flowtracer_core::shaping::{ApplyTo, Select};
use flowtracer_core::{AnswerMode, Config, Error as CoreError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyRange, PyRangeMethods};

use crate::error::*;

/// What `trace`, `token_weights` and `score_batch` accept: trace, shaping and `layers` (the
/// layer selection for per-layer input).
pub(crate) const SCORING_ALLOWED: &[&str] = &[
    "answer_mode",
    "edge_threshold",
    "row_tolerance",
    "rho",
    "gamma_flow",
    "apply_to",
    "mix",
    "normalize_mean",
    "select",
    "layers",
];
/// What `score_qk` and `QkAccumulator.finish` accept: the scoring options less `layers` (the
/// Q/K input holds the selected layers already) and `row_tolerance` (there the keyword of the
/// Q/K stage, `QkConfig::row_tolerance`; the trace keeps its default).
pub(crate) const QK_SCORING_ALLOWED: &[&str] = &[
    "answer_mode",
    "edge_threshold",
    "rho",
    "gamma_flow",
    "apply_to",
    "mix",
    "normalize_mean",
    "select",
];
/// What `shape_advantages` accepts: shaping and the group advantages (`GrpoConfig`).
pub(crate) const SHAPE_ALLOWED: &[&str] = &[
    "rho",
    "gamma_flow",
    "apply_to",
    "mix",
    "normalize_mean",
    "select",
    "scale_rewards",
    "advantage_eps",
];
/// What `Trace.backbone` accepts (`BackboneConfig`).
pub(crate) const BACKBONE_ALLOWED: &[&str] = &["coverage", "checkpoint_threshold", "rho"];

/// Parsed options: the core's configuration and layer selection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Options {
    pub(crate) config: Config,
    pub(crate) layers: LayerSelection,
}

/// An option's value that does not parse: [`argument_error`] of kind `InvalidConfig` (the
/// core's kind for a bad configuration value), with the option's name as `field`.
pub(crate) fn option_value_error(
    py: Python<'_>,
    name: &str,
    v: &Bound<'_, PyAny>,
    expected: &str,
) -> PyErr {
    argument_error(py, "InvalidConfig", name, None, v, expected)
}

/// A bool option (`normalize_mean`).
fn bool_option(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<bool> {
    v.extract()
        .map_err(|_| option_value_error(py, name, v, "True or False"))
}

/// Parses an enum option with the core's `FromStr` (its error lists the allowed names).
pub(crate) fn parse_name<T: core::str::FromStr<Err = CoreError>>(
    py: Python<'_>,
    name: &str,
    v: &Bound<'_, PyAny>,
) -> PyResult<T> {
    let s: String = v
        .extract()
        .map_err(|_| option_value_error(py, name, v, "a name (a string)"))?;
    s.parse::<T>().map_err(|e| core_error(py, &e, None))
}

pub(crate) fn parse_f64(py: Python<'_>, name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    v.extract()
        .map_err(|_| option_value_error(py, name, v, "a number"))
}

/// Options from keyword arguments, each name checked against `allowed`, starting from the
/// core's defaults.
pub(crate) fn parse_options(
    py: Python<'_>,
    kwargs: Option<&Bound<'_, PyDict>>,
    allowed: &'static [&'static str],
) -> PyResult<Options> {
    let mut o = Options::default();
    let Some(kwargs) = kwargs else {
        return Ok(o);
    };
    let (mut trace, mut shaping, mut grpo) = (o.config.trace, o.config.shaping, o.config.grpo);
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        if !allowed.contains(&name.as_str()) {
            return Err(core_error(
                py,
                &CoreError::UnknownName {
                    what: "option",
                    given: name,
                    allowed,
                },
                None,
            ));
        }
        let n = name.as_str();
        match n {
            "answer_mode" => trace = trace.with_answer_mode(parse_name::<AnswerMode>(py, n, &v)?),
            "edge_threshold" => trace = trace.with_edge_threshold(parse_f64(py, n, &v)?),
            "row_tolerance" => trace = trace.with_row_tolerance(parse_f64(py, n, &v)?),
            "rho" => shaping = shaping.with_rho(parse_f64(py, n, &v)?),
            "gamma_flow" => shaping = shaping.with_gamma_flow(parse_f64(py, n, &v)?),
            "apply_to" => shaping = shaping.with_apply_to(parse_name::<ApplyTo>(py, n, &v)?),
            "mix" => shaping = shaping.with_mix(parse_f64(py, n, &v)?),
            "normalize_mean" => shaping = shaping.with_normalize_mean(bool_option(py, n, &v)?),
            "select" => shaping = shaping.with_select(parse_name::<Select>(py, n, &v)?),
            "scale_rewards" => {
                grpo = grpo.with_scale_rewards(parse_name::<ScaleRewards>(py, n, &v)?)
            }
            "advantage_eps" => grpo = grpo.with_advantage_eps(parse_f64(py, n, &v)?),
            "layers" => o.layers = parse_layers(py, &v)?,
            _ => unreachable!("every allowed option is parsed"),
        }
    }
    o.config = o
        .config
        .with_trace(trace)
        .with_shaping(shaping)
        .with_grpo(grpo);
    Ok(o)
}

/// `layers`: a name the core's `LayerSelection::from_str` reads (`"middle"`, `"all"`,
/// `"2..6"`, `"1,3,5"`, `"spaced:3"`), a `range`, or a list of layer indices.
pub(crate) fn parse_layers(py: Python<'_>, v: &Bound<'_, PyAny>) -> PyResult<LayerSelection> {
    if let Ok(s) = v.extract::<String>() {
        return s.parse().map_err(|e| core_error(py, &e, None));
    }
    let expected = "a name, a range or a list of non-negative layer indices";
    if let Ok(r) = v.cast::<PyRange>() {
        let bounds = (|| Ok::<_, PyErr>((r.start()?, r.stop()?, r.step()?)))()
            .map_err(|_| option_value_error(py, "layers", v, expected))?;
        if let (start @ 0.., stop, 1) = bounds
            && stop >= start
        {
            return Ok(LayerSelection::Range(start as usize..stop as usize));
        }
        let items = crate::input::range_items(r)
            .map_err(|_| option_value_error(py, "layers", v, expected))?;
        let list: Vec<usize> = items
            .into_iter()
            .map(usize::try_from)
            .collect::<Result<_, _>>()
            .map_err(|_| option_value_error(py, "layers", v, expected))?;
        return Ok(LayerSelection::List(list));
    }
    let list: Vec<usize> = match v.try_iter() {
        Ok(items) if !v.is_instance_of::<pyo3::types::PyString>() => items
            .map(|x| usize_arg(py, "InvalidConfig", "layers", None, &x?))
            .collect::<PyResult<_>>()
            .map_err(|_| option_value_error(py, "layers", v, expected))?,
        _ => return Err(option_value_error(py, "layers", v, expected)),
    };
    Ok(LayerSelection::List(list))
}

/// The model layers a selection picks out of `num_layers`, ascending: the core's
/// `select_layers` (method §2), so Python callers that see one layer at a time (a forward
/// hook) choose exactly the layers `trace` would aggregate.
///
/// Errors: the core's `InvalidLayerSelection` or `UnknownName`, as `flowtracer.Error`.
#[pyfunction]
pub(crate) fn select_layers(
    py: Python<'_>,
    layers: &Bound<'_, PyAny>,
    num_layers: &Bound<'_, PyAny>,
) -> PyResult<Vec<usize>> {
    let num_layers = usize_arg(py, "BadArgument", "num_layers", None, num_layers)?;
    let selection = parse_layers(py, layers)?;
    flowtracer_core::aggregate::select_layers(num_layers, &selection)
        .map_err(|e| core_error(py, &e, None))
}

pub(crate) fn backbone_config(
    py: Python<'_>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<BackboneConfig> {
    let mut c = BackboneConfig::default();
    let Some(kwargs) = kwargs else {
        return Ok(c);
    };
    for (k, v) in kwargs.iter() {
        let name: String = k.extract()?;
        let n = name.as_str();
        c = match n {
            "coverage" => c.with_coverage(parse_f64(py, n, &v)?),
            "checkpoint_threshold" => c.with_checkpoint_threshold(parse_f64(py, n, &v)?),
            "rho" => c.with_rho(parse_f64(py, n, &v)?),
            _ => {
                return Err(core_error(
                    py,
                    &CoreError::UnknownName {
                        what: "option",
                        given: name,
                        allowed: BACKBONE_ALLOWED,
                    },
                    None,
                ));
            }
        };
    }
    Ok(c)
}

/// The core's defaults of every option, by name (enum values by their names).
#[pyfunction]
pub(crate) fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let c = Config::default();
    let b = BackboneConfig::default();
    let d = PyDict::new(py);
    d.set_item("answer_mode", c.trace.answer_mode.name())?;
    d.set_item("edge_threshold", c.trace.edge_threshold)?;
    d.set_item("row_tolerance", c.trace.row_tolerance)?;
    d.set_item("rho", c.shaping.rho)?;
    d.set_item("gamma_flow", c.shaping.gamma_flow)?;
    d.set_item("apply_to", c.shaping.apply_to.name())?;
    d.set_item("mix", c.shaping.mix)?;
    d.set_item("normalize_mean", c.shaping.normalize_mean)?;
    d.set_item("select", c.shaping.select.name())?;
    d.set_item("scale_rewards", c.grpo.scale_rewards.name())?;
    d.set_item("advantage_eps", c.grpo.advantage_eps)?;
    d.set_item("layers", LayerSelection::default().to_string())?;
    d.set_item("coverage", b.coverage)?;
    d.set_item("checkpoint_threshold", b.checkpoint_threshold)?;
    Ok(d)
}

/// The allowed names of every enum option (the core's `NAMES`).
#[pyfunction]
pub(crate) fn choices(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("answer_mode", AnswerMode::NAMES.to_vec())?;
    d.set_item("apply_to", ApplyTo::NAMES.to_vec())?;
    d.set_item("select", Select::NAMES.to_vec())?;
    d.set_item("scale_rewards", ScaleRewards::NAMES.to_vec())?;
    Ok(d)
}

/// The Q/K stage's configuration from `score_qk`'s keywords: each `None` keeps the core's
/// default (`QkConfig::default()`); the core's `validate` checks the values (in its order).
pub(crate) fn qk_config(
    py: Python<'_>,
    scale: Option<&Bound<'_, PyAny>>,
    window: Option<&Bound<'_, PyAny>>,
    logit_softcap: Option<&Bound<'_, PyAny>>,
    row_tolerance: Option<&Bound<'_, PyAny>>,
) -> PyResult<QkConfig> {
    fn given<'a, 'py>(v: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
        v.filter(|v| !v.is_none())
    }
    let mut c = QkConfig::default();
    if let Some(v) = given(scale) {
        c = c.with_scale(parse_f64(py, "scale", v)?);
    }
    if let Some(v) = given(window) {
        c = c.with_window(usize_arg(py, "InvalidConfig", "window", None, v)?);
    }
    if let Some(v) = given(logit_softcap) {
        c = c.with_logit_softcap(parse_f64(py, "logit_softcap", v)?);
    }
    if let Some(v) = given(row_tolerance) {
        c = c.with_row_tolerance(parse_f64(py, "row_tolerance", v)?);
    }
    Ok(c)
}

/// The core's defaults of the Q/K stage (`QkConfig::default()`): `scale`, `window`,
/// `logit_softcap` (None: `1/sqrt(d)`, no window, no capping) and `row_tolerance`.
#[pyfunction]
pub(crate) fn qk_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let c = QkConfig::default();
    let d = PyDict::new(py);
    d.set_item("scale", c.scale)?;
    d.set_item("window", c.window)?;
    d.set_item("logit_softcap", c.logit_softcap)?;
    d.set_item("row_tolerance", c.row_tolerance)?;
    Ok(d)
}
