//! Written by `cairn eval triage --calibrate` from the labelled incidents of
//! `../shared/datasets/incidents-dev`: (uncalibrated confidence, share of right actions, cases) per
//! block of the isotonic fit. Do not edit by hand.

pub const TABLE: &[(f64, f64, usize)] = &[
    (0.187100, 0.007812, 63),
    (0.588600, 0.007812, 63),
    (0.623600, 0.972222, 17),
    (0.740500, 0.972222, 17),
];
