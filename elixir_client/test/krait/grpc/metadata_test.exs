defmodule Krait.GRPC.MetadataTest do
  @moduledoc "gRPC header conventions: timeouts, grpc-message, -bin values, status."
  use ExUnit.Case, async: true

  alias Krait.GRPC.{Error, Metadata}

  test "grpc-timeout keeps at most 8 digits" do
    assert Metadata.encode_timeout(1500) == "1500m"
    assert Metadata.encode_timeout(99_999_999) == "99999999m"
    assert Metadata.encode_timeout(100_000_000) == "100000S"
    assert Metadata.encode_timeout(100_000_000_001) == "1666667M"
  end

  test "grpc-message is percent-decoded; malformed escapes are kept" do
    assert Metadata.decode_message("bad %C3%BC 100%25") == "bad ü 100%"
    assert Metadata.decode_message("50% off %zz") == "50% off %zz"
    assert Metadata.decode_message("%") == "%"
  end

  test "-bin values decode with or without padding, and comma-joined" do
    raw = <<1, 2, 3, 4>>
    assert Metadata.decode_bin(Base.encode64(raw)) == raw
    assert Metadata.decode_bin(Base.encode64(raw, padding: false)) == raw
    assert Metadata.decode_bin("AQ,Ag==") == <<1, 2>>
    assert Metadata.decode_bin("***") == nil
  end

  test "metadata: -bin values are base64-encoded, reserved and invalid keys refused" do
    assert [{"x-trace-bin", "AAE"}] = Metadata.encode_metadata(%{"x-trace-bin" => <<0, 1>>})
    assert [{"x-user", "ann"}] = Metadata.encode_metadata(%{"x-user" => "ann"})
    assert_raise ArgumentError, fn -> Metadata.encode_metadata(%{"grpc-status" => "0"}) end
    assert_raise ArgumentError, fn -> Metadata.encode_metadata(%{"X-Upper" => "v"}) end
    assert_raise ArgumentError, fn -> Metadata.encode_metadata(%{":path" => "/"}) end
    assert_raise ArgumentError, fn -> Metadata.encode_metadata(%{"x" => "line\nbreak"}) end
  end

  test "status from trailers" do
    assert :ok = Metadata.status_from_trailers([{"grpc-status", "0"}], 200)

    details = <<8, 3, 18, 3, "bad">>

    assert {:error, %Error{status: 3, message: "bad input", details: ^details, trailers: t}} =
             Metadata.status_from_trailers(
               [
                 {":status", "200"},
                 {"grpc-status", "3"},
                 {"grpc-message", "bad%20input"},
                 {"grpc-status-details-bin", Base.encode64(details, padding: false)}
               ],
               200
             )

    refute Map.has_key?(t, ":status")
    assert {:error, %Error{status: 12}} = Metadata.status_from_trailers([], 404)
    assert {:error, %Error{status: 14}} = Metadata.status_from_trailers([], 503)
    assert {:error, %Error{status: 13}} = Metadata.status_from_trailers([], 200)
  end

  test "RST_STREAM codes map to gRPC statuses" do
    assert %Error{status: 14} = Metadata.from_rst_stream(7)
    assert %Error{status: 1} = Metadata.from_rst_stream(8)
    assert %Error{status: 8} = Metadata.from_rst_stream(11)
    assert %Error{status: 13} = Metadata.from_rst_stream(0)
  end

  test "errors are exceptions with a readable message" do
    assert Exception.message(Error.unavailable("gone")) == "gRPC UNAVAILABLE (14): gone"
    assert_raise Error, ~r/DEADLINE_EXCEEDED/, fn -> raise Error.deadline_exceeded() end
  end
end
