# Generate independent R reference values for the nat_estimators test suite.
#
# Run from the repository root:
#   Rscript tests/reference/generate_r_references.R
#
# Requires R >= 4 with the CRAN packages `sampling`, `survey` and `jsonlite`
# (Debian/Ubuntu: apt-get install -y r-base-core r-cran-sampling r-cran-survey
# r-cran-jsonlite).  Writes
#   tests/reference/r_designs.json     (sampling designs: pik, pi2, draws)
#   tests/reference/r_estimators.json  (HT / Hajek estimators and variances)
#
# Full double precision: jsonlite (at least up to 1.8.x) never prints more
# than 15 significant digits, even with digits = NA or digits = I(17), which
# does not round-trip doubles.  Every double is therefore formatted here with
# sprintf("%.17g") and inserted verbatim (class "json" + json_verbatim = TRUE).
# Matrices are written as arrays of rows; vectors are always arrays, even when
# of length 1.

suppressPackageStartupMessages({
  library(sampling)
  library(survey)
  library(jsonlite)
})

out_dir <- file.path("tests", "reference")
if (!dir.exists(out_dir)) {
  stop("run this script from the repository root (", out_dir, " not found)")
}

# ---------------------------------------------------------------------------
# JSON helpers (verbatim, full precision)
# ---------------------------------------------------------------------------
fmt_num <- function(x) {
  x <- as.numeric(x)
  if (any(!is.finite(x))) stop("non-finite value in output")
  out <- sprintf("%.17g", x)
  out[x == 0] <- "0"  # avoid "-0"
  out
}
json_scalar <- function(x) {
  stopifnot(length(x) == 1)
  structure(fmt_num(x), class = "json")
}
json_vec <- function(x) {
  structure(paste0("[", paste(fmt_num(x), collapse = ", "), "]"), class = "json")
}
json_int_vec <- function(x) {
  xi <- as.integer(round(x))
  stopifnot(all(abs(xi - x) == 0))
  structure(paste0("[", paste(xi, collapse = ", "), "]"), class = "json")
}
json_mat <- function(m) {  # array of rows
  m <- as.matrix(m)
  rows <- vapply(seq_len(nrow(m)), function(i) unclass(json_vec(m[i, ])), "")
  structure(paste0("[", paste(rows, collapse = ", "), "]"), class = "json")
}
write_ref <- function(x, file) {
  path <- file.path(out_dir, file)
  write_json(x, path, json_verbatim = TRUE, digits = NA,
             auto_unbox = TRUE, pretty = TRUE)
  cat("wrote", path, "\n")
}

check_close <- function(a, b, tol, what) {
  d <- max(abs(as.numeric(a) - as.numeric(b)))
  if (!is.finite(d) || d > tol) stop(sprintf("%s: max abs diff %.3g > %.3g", what, d, tol))
  invisible(d)
}

# Guard against the quirks that the references must avoid.
stopifnot(identical(names(formals(varHT)), c("y", "pikl", "method")))
stopifnot(grepl("runif(1, 0, 1)", paste(deparse(body(UPsystematic)), collapse = " "),
                fixed = TRUE))

# ---------------------------------------------------------------------------
# 1. inclusionprobabilities(x, n)
# ---------------------------------------------------------------------------
set.seed(20240101)

# number of capping rounds used by the iterative algorithm (informational)
capping_rounds <- function(x, n) {
  p <- n * x / sum(x)
  cert <- rep(FALSE, length(x))
  rounds <- 0
  repeat {
    newc <- !cert & p >= 1
    if (!any(newc)) break
    rounds <- rounds + 1
    cert <- cert | newc
    rest <- !cert & x > 0
    p[cert] <- 1
    p[rest] <- (n - sum(cert)) * x[rest] / sum(x[rest])
  }
  rounds
}

ip_inputs <- list(
  list(x = runif(5), n = 2),
  list(x = runif(10), n = 3.5),
  list(x = rexp(20), n = 5),
  list(x = rlnorm(50, 0, 1), n = 10),
  list(x = rlnorm(100, 0, 2), n = 20),                         # heavy tail
  list(x = runif(200, 0.1, 1), n = 37.25),
  list(x = c(runif(7), 1000), n = 3),                          # one certainty
  list(x = c(1000, 100, 30, 10, runif(16, 0.5, 1.5)), n = 5),  # several rounds
  list(x = c(5e4, 2e3, 300, 60, 12, rexp(25)), n = 6.5),       # several rounds, non-integer n
  list(x = c(0, runif(4), 0, runif(5), 0), n = 4),             # zeros, feasible
  list(x = c(runif(3), 0, runif(2), 0), n = 5),                # n == #positive sizes
  list(x = rexp(60), n = 1),
  list(x = c(rlnorm(30, 0, 1.5), 200, 150), n = 12)
)

ip_cases <- list()
for (i in seq_along(ip_inputs)) {
  x <- ip_inputs[[i]]$x
  n <- ip_inputs[[i]]$n
  npos <- sum(x > 0)
  if (n > npos) stop("infeasible inclusionprobabilities case ", i)
  pik <- suppressWarnings(inclusionprobabilities(x, n))
  check_close(sum(pik), n, 1e-9, sprintf("inclusionprobabilities case %d: sum(pik) != n", i))
  if (any(pik < 0) || any(pik > 1)) stop("pik outside [0,1] in case ", i)
  if (any(pik[x == 0] != 0)) stop("zero size with positive pik in case ", i)
  cat(sprintf("inclusionprobabilities case %2d: N=%3d n=%6.2f certainty=%d capping rounds=%d\n",
              i, length(x), n, sum(pik == 1), capping_rounds(x, n)))
  ip_cases[[i]] <- list(x = json_vec(x), n = json_scalar(n), pik = json_vec(pik))
}

# ---------------------------------------------------------------------------
# 2. UPsystematicpi2(pik), integer sum(pik) only
# ---------------------------------------------------------------------------
set.seed(20240202)
sp_inputs <- list(
  list(x = runif(4), n = 2),
  list(x = runif(6), n = 3),
  list(x = c(runif(9), 500), n = 4),          # one certainty unit
  list(x = rep(1, 12), n = 3),                # equal probabilities
  list(x = rlnorm(15, 0, 0.7), n = 5),
  list(x = rexp(20) + 0.05, n = 7),
  list(x = runif(30, 0.2, 1), n = 10),
  list(x = runif(9), n = 1)
)
sp_cases <- list()
for (i in seq_along(sp_inputs)) {
  x <- sp_inputs[[i]]$x
  n <- sp_inputs[[i]]$n
  pik <- inclusionprobabilities(x, n)
  pi2 <- UPsystematicpi2(pik)
  check_close(diag(pi2), pik, 1e-9, sprintf("UPsystematicpi2 case %d: diag", i))
  check_close(rowSums(pi2), n * pik, 1e-9, sprintf("UPsystematicpi2 case %d: rowSums", i))
  check_close(pi2, t(pi2), 1e-12, sprintf("UPsystematicpi2 case %d: symmetry", i))
  if (any(pi2 < -1e-12)) stop("negative pi2 in case ", i)
  cat(sprintf("UPsystematicpi2 case %d: N=%d n=%d certainty=%d zero pi2=%d\n",
              i, length(pik), n, sum(pik == 1), sum(pi2 == 0)))
  sp_cases[[i]] <- list(pik = json_vec(pik), pi2 = json_mat(pi2))
}

# ---------------------------------------------------------------------------
# 3. UPsystematic draws with the uniform it used
# ---------------------------------------------------------------------------
set.seed(20240303)
draw_inputs <- list(
  list(x = runif(5, 0.2, 1), n = 2),
  list(x = runif(7, 0.2, 1), n = 2.5),
  list(x = runif(10, 0.3, 1), n = 4),
  list(x = rlnorm(12, 0, 0.5), n = 3.3),
  list(x = rep(1, 16), n = 5),
  list(x = runif(20, 0.1, 1), n = 6),
  list(x = rexp(30) + 1, n = 7.75),
  list(x = runif(50, 0.05, 1), n = 12)
)
draw_cases <- list()
for (i in seq_along(draw_inputs)) {
  pik <- inclusionprobabilities(draw_inputs[[i]]$x, draw_inputs[[i]]$n)
  eps <- 1e-6
  if (any(pik <= eps) || any(pik >= 1 - eps)) stop("draw pik outside (eps, 1-eps) in vector ", i)
  for (j in 1:5) {
    k <- 1000L * i + j
    set.seed(k); u <- runif(1)
    set.seed(k); s <- UPsystematic(pik)
    # recompute with the documented rule to be sure u is the uniform used
    a <- (c(0, cumsum(pik)) - u) %% 1
    s_chk <- as.integer(a[seq_along(pik)] > a[seq_along(pik) + 1])
    if (!identical(as.integer(s), s_chk)) stop("UPsystematic recomputation mismatch, seed ", k)
    draw_cases[[length(draw_cases) + 1]] <- list(
      pik = json_vec(pik), u = json_scalar(u), s = json_int_vec(s), seed = k)
  }
}
cat(sprintf("upsystematic_draws: %d draws over %d pik vectors\n",
            length(draw_cases), length(draw_inputs)))

# ---------------------------------------------------------------------------
# 4. SRSWOR joint probabilities via maximum entropy with equal pik
# ---------------------------------------------------------------------------
srs_cases <- list()
srs_Nn <- list(c(5, 2), c(8, 3), c(10, 5), c(12, 1), c(7, 6))
set.seed(20240404)
for (i in seq_along(srs_Nn)) {
  N <- srs_Nn[[i]][1]; n <- srs_Nn[[i]][2]
  pik <- rep(n / N, N)
  pi2 <- UPmaxentropypi2(pik)
  exact <- matrix(n * (n - 1) / (N * (N - 1)), N, N); diag(exact) <- n / N
  d <- max(abs(pi2 - exact))
  cat(sprintf("srswor (N=%d, n=%d): max |UPmaxentropypi2 - n(n-1)/(N(N-1))| = %.3g\n", N, n, d))
  if (d > 1e-8) stop("UPmaxentropypi2 does not reproduce SRSWOR for N=", N, " n=", n)
  s <- srswor(n, N)
  if (sum(s) != n || length(s) != N || !all(s %in% c(0, 1))) stop("srswor sanity check failed")
  srs_cases[[i]] <- list(N = as.integer(N), n = as.integer(n),
                         pik = json_vec(pik), pi2 = json_mat(pi2))
}

designs <- list(
  inclusionprobabilities = ip_cases,
  upsystematicpi2 = sp_cases,
  upsystematic_draws = draw_cases,
  srswor_joint = srs_cases,
  meta = list(
    R = R.version.string,
    sampling = as.character(packageVersion("sampling")),
    survey = as.character(packageVersion("survey")),
    jsonlite = as.character(packageVersion("jsonlite")),
    date = format(Sys.Date()),
    script = "tests/reference/generate_r_references.R"
  )
)
write_ref(designs, "r_designs.json")

# ---------------------------------------------------------------------------
# 5. Estimators: HTestimator, varHT (methods 1 and 2), survey svytotal/svymean
# ---------------------------------------------------------------------------
set.seed(20240505)

make_y <- function(N, q, pik) {
  cols <- list(
    10 * pik + rnorm(N),          # roughly proportional to the size measure
    rexp(N, 0.5),
    rnorm(N, -2, 3)               # contains negative values
  )
  y <- do.call(cbind, cols[seq_len(q)])
  colnames(y) <- paste0("y", seq_len(q))
  y
}

est_specs <- list(
  list(design = "poisson", N = 10, q = 1, x = c(runif(9), 40), n = 4),
  list(design = "poisson", N = 20, q = 2, x = c(runif(19, 0.2, 1), NA), n = 6,
       tiny = TRUE, force_tiny = FALSE),
  list(design = "poisson", N = 20, q = 3, x = c(runif(19, 0.2, 1), NA), n = 6,
       tiny = TRUE, force_tiny = TRUE),     # the 1e-4 unit is in the sample
  list(design = "poisson", N = 30, q = 3, x = c(rlnorm(28), 100, 80), n = 9.5),
  list(design = "systematic", N = 8, q = 1, x = runif(8, 0.2, 1), n = 3),
  list(design = "systematic", N = 15, q = 2, x = c(runif(14, 0.2, 1), 300), n = 5),
  list(design = "systematic", N = 25, q = 3, x = rexp(25) + 0.1, n = 8),
  list(design = "srswor", N = 8, q = 1, n = 3),
  list(design = "srswor", N = 12, q = 2, n = 5),
  list(design = "srswor", N = 20, q = 3, n = 7),
  list(design = "srswor", N = 6, q = 2, n = 2)
)

est_cases <- list()
for (ci in seq_along(est_specs)) {
  sp <- est_specs[[ci]]
  N <- sp$N; q <- sp$q
  if (sp$design == "srswor") {
    n <- sp$n
    pik <- rep(n / N, N)
    pi2 <- matrix(n * (n - 1) / (N * (N - 1)), N, N)
    diag(pi2) <- pik
  } else if (sp$design == "poisson") {
    if (isTRUE(sp$tiny)) {
      # N-1 units share n - 1e-4, the last unit has pik = 1e-4 exactly
      pik <- c(inclusionprobabilities(sp$x[1:(N - 1)], sp$n - 1e-4), 1e-4)
    } else {
      pik <- inclusionprobabilities(sp$x, sp$n)
    }
    pi2 <- outer(pik, pik)
    diag(pi2) <- pik
  } else {
    pik <- inclusionprobabilities(sp$x, sp$n)
    pi2 <- UPsystematicpi2(pik)
  }
  y <- make_y(N, q, pik)

  # draw the sample: need >= 2 sampled units, at least one with pik < 1
  ok <- function(s) sum(s) >= 2 && any(pik[s == 1] < 1) &&
    (!isTRUE(sp$force_tiny) || s[N] == 1)
  seed <- 100L * ci
  repeat {
    set.seed(seed)
    s <- switch(sp$design,
                poisson = UPpoisson(pik),
                systematic = UPsystematic(pik),
                srswor = srswor(sp$n, N))
    if (ok(s)) break
    seed <- seed + 1L
  }
  s <- as.integer(s)
  idx <- which(s == 1)
  ys <- y[idx, , drop = FALSE]
  pks <- pik[idx]
  p2s <- pi2[idx, idx, drop = FALSE]

  ht <- vapply(seq_len(q), function(j) as.numeric(HTestimator(ys[, j], pks)), 0)
  v1 <- vapply(seq_len(q), function(j) varHT(ys[, j], p2s, method = 1), 0)
  v2 <- if (sp$design == "poisson") NULL else
    vapply(seq_len(q), function(j) varHT(ys[, j], p2s, method = 2), 0)

  df <- data.frame(ys, pik = pks)
  fml <- as.formula(paste("~", paste(colnames(y), collapse = " + ")))
  d_mat <- svydesign(ids = ~1, fpc = ~pik, data = df,
                     pps = ppsmat(p2s, tolerance = 0), variance = "HT")
  if (sp$design == "poisson") {
    d <- svydesign(ids = ~1, fpc = ~pik, data = df,
                   pps = poisson_sampling(pks), variance = "HT")
    survey_pps <- "poisson_sampling"
  } else {
    d <- d_mat
    survey_pps <- "ppsmat"
  }
  tot <- svytotal(fml, d)
  mn <- svymean(fml, d)
  tot_v <- as.numeric(coef(tot)); tot_se <- as.numeric(SE(tot))
  mn_v <- as.numeric(coef(mn)); mn_se <- as.numeric(SE(mn))

  # cross-checks
  check_close(tot_v, ht, 1e-9 * max(1, abs(ht)), sprintf("estimator case %d: svytotal vs HTestimator", ci))
  hajek <- colSums(ys / pks) / sum(1 / pks)
  check_close(mn_v, hajek, 1e-9 * max(1, abs(hajek)), sprintf("estimator case %d: svymean vs Hajek", ci))
  rel <- abs(tot_se^2 - v1) / pmax(abs(v1), 1e-300)
  if (any(rel > 1e-9)) {
    cat(sprintf("NOTE estimator case %d (%s): svytotal SE^2 != varHT(method=1): %s vs %s\n",
                ci, sp$design, paste(signif(tot_se^2, 10), collapse = ","),
                paste(signif(v1, 10), collapse = ",")))
  }
  if (sp$design == "poisson") {
    tse_mat <- as.numeric(SE(svytotal(fml, d_mat)))
    if (any(abs(tse_mat - tot_se) > 1e-9 * pmax(1, tot_se))) {
      cat(sprintf("NOTE estimator case %d: ppsmat SE differs from poisson_sampling SE\n", ci))
    }
  }
  cat(sprintf("estimator case %2d: %-10s N=%2d q=%d n_s=%d seed=%d max|SE^2-varHT1|/varHT1=%.2g\n",
              ci, sp$design, N, q, length(idx), seed, max(rel)))

  est_cases[[ci]] <- list(
    design = sp$design,
    N = as.integer(N),
    pik = json_vec(pik),
    pi2 = json_mat(pi2),
    y = json_mat(y),
    s = json_int_vec(s),
    seed = seed,
    HTestimator = json_vec(ht),
    varHT1 = json_vec(v1),
    varHT2 = if (is.null(v2)) NULL else json_vec(v2),
    svytotal = json_vec(tot_v),
    svytotal_se = json_vec(tot_se),
    svymean = json_vec(mn_v),
    svymean_se = json_vec(mn_se),
    survey_pps = survey_pps
  )
}
# keep varHT2 = null in the output (a NULL list element would be dropped)
est_cases <- lapply(est_cases, function(e) {
  if (is.null(e$varHT2)) e["varHT2"] <- list(structure("null", class = "json"))
  e
})

estimators <- list(
  cases = est_cases,
  meta = designs$meta
)
write_ref(estimators, "r_estimators.json")
