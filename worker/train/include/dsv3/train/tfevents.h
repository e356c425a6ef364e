// TensorBoard's event-file format, written without TensorFlow: a sequence of records
//   uint64 length | uint32 masked CRC32C(length) | Event protobuf | uint32 masked CRC32C(data)
// where Event { double wall_time = 1; int64 step = 2; string file_version = 3;
// Summary summary = 5 } and Summary.Value { string tag = 1; float simple_value = 2 }.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::train {

uint32_t Crc32c(std::string_view data);
uint32_t MaskedCrc32c(std::string_view data);  // TFRecord's ((crc >> 15 | crc << 17) + 0xa282ead8)

class EventFileWriter {
 public:
  // Creates <dir>/events.out.tfevents.<unix seconds>.<host> and writes the version record.
  explicit EventFileWriter(const std::string& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;
  void AddScalar(const std::string& tag, double value, int64_t step, double wall_time);
  void Flush();
  const std::string& path() const { return path_; }

 private:
  void WriteRecord(const std::string& event);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Reading back (tests, tools): every record's payload, after checking both CRCs. Throws
// std::runtime_error on a bad length or checksum.
std::vector<std::string> ReadRecords(const std::string& path);

}  // namespace dsv3::train
