#include "exporter/metric_builder.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <prometheus/metric_type.h>

namespace coiommu::exporter {
namespace {

prometheus::MetricFamily family(std::string name, std::string help, prometheus::MetricType type) {
    prometheus::MetricFamily f;
    f.name = std::move(name);
    f.help = std::move(help);
    f.type = type;
    return f;
}

}  // namespace

prometheus::MetricFamily counter_family(std::string name, std::string help) {
    return family(std::move(name), std::move(help), prometheus::MetricType::Counter);
}

prometheus::MetricFamily gauge_family(std::string name, std::string help) {
    return family(std::move(name), std::move(help), prometheus::MetricType::Gauge);
}

prometheus::MetricFamily histogram_family(std::string name, std::string help) {
    return family(std::move(name), std::move(help), prometheus::MetricType::Histogram);
}

void add_counter(prometheus::MetricFamily& f, double value, Labels labels) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    m.counter.value = value;
    f.metric.push_back(std::move(m));
}

void add_gauge(prometheus::MetricFamily& f, double value, Labels labels) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    m.gauge.value = value;
    f.metric.push_back(std::move(m));
}

double bucket_bound(std::size_t k, const HistogramScale& scale) {
    // Multiplying by a power of two is exact, so 2^10 × 1e-9 prints as 1.024e-06.
    return std::ldexp(scale.unit_to_base, static_cast<int>(k));
}

prometheus::ClientMetric::Histogram to_client_histogram(std::span<const uint64_t> buckets, uint64_t sum,
                                                        const HistogramScale& scale) {
    prometheus::ClientMetric::Histogram h;
    if (buckets.empty()) return h;
    const std::size_t last = std::min(scale.last_bucket, buckets.size() - 1);
    const std::size_t first = std::min(scale.first_bucket, last);
    h.bucket.reserve(last - first + 1);
    uint64_t cumulative = 0;
    for (std::size_t k = 0; k < first; ++k) cumulative += buckets[k];
    for (std::size_t k = first; k <= last; ++k) {
        cumulative += buckets[k];
        prometheus::ClientMetric::Bucket b;
        b.cumulative_count = cumulative;
        b.upper_bound = bucket_bound(k, scale);
        h.bucket.push_back(b);
    }
    for (std::size_t k = last + 1; k < buckets.size(); ++k) cumulative += buckets[k];
    // The same bucket values, summed once: +Inf (appended by the serializer) == _count.
    h.sample_count = cumulative;
    h.sample_sum = static_cast<double>(sum) * scale.unit_to_base;
    return h;
}

prometheus::ClientMetric::Histogram to_client_histogram(const telemetry::HistogramSnapshot& s,
                                                        const HistogramScale& scale) {
    return to_client_histogram(std::span<const uint64_t>(s.buckets), s.sum, scale);
}

void add_histogram(prometheus::MetricFamily& f, const telemetry::HistogramSnapshot& snapshot,
                   const HistogramScale& scale, Labels labels) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    m.histogram = to_client_histogram(snapshot, scale);
    f.metric.push_back(std::move(m));
}

void add_histogram(prometheus::MetricFamily& f, std::span<const uint64_t> buckets, uint64_t sum,
                   const HistogramScale& scale, Labels labels) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    m.histogram = to_client_histogram(buckets, sum, scale);
    f.metric.push_back(std::move(m));
}

}  // namespace coiommu::exporter
