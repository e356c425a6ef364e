#include "dsv3/train/tfevents.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace dsv3::train {
namespace {

const std::array<uint32_t, 256>& Crc32cTable() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;  // Castagnoli, reflected
      t[i] = c;
    }
    return t;
  }();
  return table;
}

void Varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void Fixed64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

void Fixed32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xFF);
}

void LengthDelimited(std::string& out, uint32_t field, const std::string& bytes) {
  Varint(out, (field << 3) | 2);
  Varint(out, bytes.size());
  out += bytes;
}

std::string EventHeader(double wall_time, int64_t step) {
  std::string e;
  uint64_t bits;
  std::memcpy(&bits, &wall_time, 8);
  Varint(e, (1 << 3) | 1);  // wall_time, fixed64
  Fixed64(e, bits);
  Varint(e, (2 << 3) | 0);  // step, varint
  Varint(e, static_cast<uint64_t>(step));
  return e;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t Crc32c(std::string_view data) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = Crc32cTable()[(c ^ b) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t MaskedCrc32c(std::string_view data) {
  const uint32_t crc = Crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

EventFileWriter::EventFileWriter(const std::string& dir) {
  std::filesystem::create_directories(dir);
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  const auto seconds = static_cast<long long>(Now());
  path_ = dir + "/events.out.tfevents." + std::to_string(seconds) + "." + host + "." + std::to_string(getpid());
  file_ = std::fopen(path_.c_str(), "wb");
  if (file_ == nullptr) throw std::runtime_error("/logging/tensorboard/log_dir: cannot create " + path_);
  std::string e = EventHeader(Now(), 0);
  LengthDelimited(e, 3, "brain.Event:2");
  WriteRecord(e);
  Flush();
}

EventFileWriter::~EventFileWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void EventFileWriter::AddScalar(const std::string& tag, double value, int64_t step, double wall_time) {
  std::string v;
  LengthDelimited(v, 1, tag);
  const float f = static_cast<float>(value);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  Varint(v, (2 << 3) | 5);  // simple_value, fixed32
  Fixed32(v, bits);
  std::string summary;
  LengthDelimited(summary, 1, v);
  std::string e = EventHeader(wall_time, step);
  LengthDelimited(e, 5, summary);
  WriteRecord(e);
}

void EventFileWriter::WriteRecord(const std::string& event) {
  std::string header;
  Fixed64(header, event.size());
  std::string record = header;
  Fixed32(record, MaskedCrc32c(header));
  record += event;
  Fixed32(record, MaskedCrc32c(event));
  std::fwrite(record.data(), 1, record.size(), file_);
}

void EventFileWriter::Flush() { std::fflush(file_); }

std::vector<std::string> ReadRecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<std::string> out;
  const auto u32 = [](const char* p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
    return v;
  };
  while (true) {
    char header[12];
    in.read(header, 12);
    if (in.gcount() == 0) break;
    if (in.gcount() != 12) throw std::runtime_error(path + ": truncated record header");
    uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(header[i]);
    if (MaskedCrc32c(std::string_view(header, 8)) != u32(header + 8)) throw std::runtime_error(path + ": bad length CRC");
    if (length > (1u << 26)) throw std::runtime_error(path + ": record too long");
    std::string data(length, '\0');
    char crc[4];
    in.read(data.data(), static_cast<std::streamsize>(length));
    in.read(crc, 4);
    if (!in) throw std::runtime_error(path + ": truncated record");
    if (MaskedCrc32c(data) != u32(crc)) throw std::runtime_error(path + ": bad data CRC");
    out.push_back(std::move(data));
  }
  return out;
}

}  // namespace dsv3::train
