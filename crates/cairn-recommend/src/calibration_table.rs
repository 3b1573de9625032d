//! Written by `cairn eval triage --calibrate` from the labelled incidents of
//! `../shared/datasets/incidents-dev`: (uncalibrated confidence, share of right actions, cases) per
//! block of the isotonic fit. Do not edit by hand.

pub const TABLE: &[(f64, f64, usize)] = &[
    (0.267200, 0.007812, 63),
    (0.840900, 0.007812, 63),
    (0.932400, 0.972222, 17),
    (1.000000, 0.972222, 17),
];
