//! Clinical codes of the simulated devices' outputs: LOINC, IEEE 11073-10101 (MDC) and UCUM.

/// How one kind of value is coded: what a FHIR Observation (or a telemetry channel
/// declaration) needs to say what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    /// LOINC code (empty for waveforms, which MDC names precisely and LOINC does not).
    pub loinc: &'static str,
    /// IEEE 11073-10101 nomenclature code (partition × 65536 + term code).
    pub mdc: u32,
    /// The MDC reference identifier, e.g. `MDC_PULS_OXIM_SAT_O2`.
    pub mdc_name: &'static str,
    /// UCUM unit of the value, e.g. `%`, `/min`, `mm[Hg]`, `Cel`, `kg`, `mV`.
    pub unit: &'static str,
    /// A short English display name.
    pub display: &'static str,
}

/// Oxygen saturation by pulse oximetry.
pub const SPO2: Code = Code {
    loinc: "59408-5",
    mdc: 150_456,
    mdc_name: "MDC_PULS_OXIM_SAT_O2",
    unit: "%",
    display: "Oxygen saturation (pulse oximetry)",
};

/// Pulse rate measured by the pulse oximeter.
pub const PULSE_RATE_OXIMETER: Code = Code {
    loinc: "8867-4",
    mdc: 149_530,
    mdc_name: "MDC_PULS_OXIM_PULS_RATE",
    unit: "/min",
    display: "Heart rate (pulse oximeter)",
};

/// Plethysmogram from the pulse oximeter (dimensionless, normalised 0–1).
pub const PLETH: Code = Code {
    loinc: "",
    mdc: 150_452,
    mdc_name: "MDC_PULS_OXIM_PLETH",
    unit: "1",
    display: "Plethysmogram",
};

/// ECG, lead I.
pub const ECG_LEAD_I: Code = Code {
    loinc: "",
    mdc: 131_329,
    mdc_name: "MDC_ECG_ELEC_POTL_I",
    unit: "mV",
    display: "ECG lead I",
};

/// ECG, lead II.
pub const ECG_LEAD_II: Code = Code {
    loinc: "",
    mdc: 131_330,
    mdc_name: "MDC_ECG_ELEC_POTL_II",
    unit: "mV",
    display: "ECG lead II",
};

/// ECG, lead III.
pub const ECG_LEAD_III: Code = Code {
    loinc: "",
    mdc: 131_389,
    mdc_name: "MDC_ECG_ELEC_POTL_III",
    unit: "mV",
    display: "ECG lead III",
};

/// Body temperature.
pub const BODY_TEMPERATURE: Code = Code {
    loinc: "8310-5",
    mdc: 150_364,
    mdc_name: "MDC_TEMP_BODY",
    unit: "Cel",
    display: "Body temperature",
};

/// Systolic blood pressure (non-invasive).
pub const SYSTOLIC_BP: Code = Code {
    loinc: "8480-6",
    mdc: 150_021,
    mdc_name: "MDC_PRESS_BLD_NONINV_SYS",
    unit: "mm[Hg]",
    display: "Systolic blood pressure",
};

/// Diastolic blood pressure (non-invasive).
pub const DIASTOLIC_BP: Code = Code {
    loinc: "8462-4",
    mdc: 150_022,
    mdc_name: "MDC_PRESS_BLD_NONINV_DIA",
    unit: "mm[Hg]",
    display: "Diastolic blood pressure",
};

/// Mean arterial pressure (non-invasive).
pub const MEAN_BP: Code = Code {
    loinc: "8478-0",
    mdc: 150_023,
    mdc_name: "MDC_PRESS_BLD_NONINV_MEAN",
    unit: "mm[Hg]",
    display: "Mean blood pressure",
};

/// Pulse rate measured by the blood pressure cuff.
pub const PULSE_RATE_CUFF: Code = Code {
    loinc: "8867-4",
    mdc: 149_546,
    mdc_name: "MDC_PULS_RATE_NON_INV",
    unit: "/min",
    display: "Heart rate (blood pressure cuff)",
};

/// Body weight.
pub const BODY_WEIGHT: Code = Code {
    loinc: "29463-7",
    mdc: 188_736,
    mdc_name: "MDC_MASS_BODY_ACTUAL",
    unit: "kg",
    display: "Body weight",
};
