"""tracking.conventions: the paper's statistics, the one definition the engine and the report share."""
from tracking import conventions as cv


def test_L_at_grok_is_the_seed_mean_curve_at_the_logged_step_nearest_the_median_t_grok():
    curve = cv.seed_mean_curve([[(1, 1.0), (200, 10.0), (400, 20.0)], [(1, 3.0), (200, 14.0), (400, 30.0)]])
    assert curve == [(1, 2.0), (200, 12.0), (400, 25.0)]
    assert cv.l_at_grok(curve, 350) == 25.0
    assert cv.l_at_grok(curve, 300) == 12.0            # a tie goes to the earlier step
    assert cv.l_at_grok(curve, None) is None and cv.l_at_grok([], 300) is None


def test_a_seed_mean_point_is_over_the_members_that_have_it():
    # retire: member lets a seed stop early: its later points are missing, the mean is over the rest
    assert cv.seed_mean_curve([[(200, 1.0)], [(200, 3.0), (400, 5.0)]]) == [(200, 2.0), (400, 5.0)]


def test_w_c_is_the_median_norm_at_the_end_of_the_run_over_grokked_seeds_with_a_majority():
    res = [{"t_grok": 900, "weight_norm_final": 50.0, "weight_norm_at_grok": 40.0},
           {"t_grok": 1200, "weight_norm_final": 54.0, "weight_norm_at_grok": 45.0},
           {"t_grok": None, "weight_norm_final": 70.0},
           {"t_grok": 1000, "weight_norm_final": 52.0, "diverged": True}]
    assert cv.w_c(res) is None                        # 2 of 4 grokked (the diverged one never counts)
    res[3]["diverged"] = False
    assert cv.w_c(res) == 52.0                        # median of 50, 54, 52; not the norms at grok
    assert cv.majority(2, 4) is False and cv.majority(3, 5) is True
