"""vcascade calibration: labelled datasets and correctness scoring, conformal threshold
fitting, learned deferral rules, the calibration job and its reports."""
