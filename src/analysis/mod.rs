//! Analysis (being written).
